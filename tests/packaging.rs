//! The packages an operator installs: the Debian package built by `packaging/build-deb`
//! and the Python client's wheel. Each is built from this checkout into a temporary
//! directory and its contents checked as installed, away from the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: impl std::borrow::Borrow<Output>) -> String {
    let out = out.borrow();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sections of an ELF file, as `readelf` names them.
fn sections(binary: &Path) -> String {
    text(run(Command::new("readelf").arg("-S").arg("-W").arg(binary)))
}

#[test]
fn the_debian_package_holds_the_binary_its_manual_completions_and_unit() {
    let out = tempfile::tempdir().unwrap();
    let built = run(Command::new(repo().join("packaging/build-deb"))
        .arg(env!("CARGO_BIN_EXE_entente"))
        .arg(out.path()));
    let deb = PathBuf::from(text(&built).trim());
    assert!(deb.is_file(), "no package at {}", deb.display());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("entente_{version}_")),
        "{}",
        deb.display()
    );

    let field = |name: &str| {
        text(run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name)))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "entente");
    assert_eq!(field("Version"), version);
    assert!(field("Depends").contains("adduser"));
    assert!(!field("Description").is_empty());

    let listing = text(run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/entente",
        "./usr/share/man/man1/entente.1.gz",
        "./usr/share/man/man1/entente-serve.1.gz",
        "./usr/share/man/man1/entente-query.1.gz",
        "./usr/share/bash-completion/completions/entente",
        "./usr/share/zsh/vendor-completions/_entente",
        "./usr/share/fish/vendor_completions.d/entente.fish",
        "./lib/systemd/system/entente.service",
        "./usr/share/doc/entente/copyright",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{listing}"
        );
    }
    // Everything belongs to root; only the binary is executable.
    for line in listing.lines().filter(|l| !l.starts_with('d')) {
        assert!(line.contains("root/root"), "{line}");
        let executable = line.starts_with("-rwx");
        assert_eq!(executable, line.ends_with("./usr/bin/entente"), "{line}");
    }

    let tree = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(tree.path()));
    let binary = tree.path().join("usr/bin/entente");
    let said = text(run(Command::new(&binary).arg("--version")));
    assert_eq!(said.trim(), format!("entente {version}"));
    // Stripped: no symbol table, no debug information.
    let sections = sections(&binary);
    assert!(!sections.contains(".symtab"), "{sections}");
    for debug in [".debug_info", ".debug_line"] {
        assert!(!sections.contains(debug), "{sections}");
    }
    assert!(
        std::fs::metadata(&binary).unwrap().len()
            < std::fs::metadata(env!("CARGO_BIN_EXE_entente"))
                .unwrap()
                .len()
    );

    let unit =
        std::fs::read_to_string(tree.path().join("lib/systemd/system/entente.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/entente --log-format json serve"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    assert!(unit.contains("User=entente"), "{unit}");

    let manual = text(run(Command::new("gzip")
        .arg("-dc")
        .arg(tree.path().join("usr/share/man/man1/entente-serve.1.gz"))));
    assert!(manual.contains(".TH"), "{manual}");
    assert!(manual.contains("NAME"), "{manual}");
    assert!(manual.contains("\\-\\-config"), "{manual}");

    let bash = std::fs::read_to_string(
        tree.path()
            .join("usr/share/bash-completion/completions/entente"),
    )
    .unwrap();
    for command in ["serve", "query", "publish", "ledger"] {
        assert!(
            bash.contains(command),
            "{command} not in the bash completion"
        );
    }

    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
}

#[test]
fn a_missing_binary_is_refused_by_the_package_builder() {
    let out = tempfile::tempdir().unwrap();
    let refused = Command::new(repo().join("packaging/build-deb"))
        .arg(out.path().join("no-such-binary"))
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("no executable at"), "{said}");
}

/// Copies `from` into `to`, leaving out what a build leaves behind.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ["build", "_generated", "__pycache__"].contains(&name.as_ref())
            || name.ends_with(".egg-info")
        {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_python_client_wheel_carries_its_stubs_and_installs_alone() {
    let work = tempfile::tempdir().unwrap();
    // The client and the protocol only, as in a source release.
    copy_tree(
        &repo().join("clients/python"),
        &work.path().join("clients/python"),
    );
    copy_tree(&repo().join("proto"), &work.path().join("proto"));
    let wheels = work.path().join("wheels");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
        ])
        .arg(&wheels)
        .arg(work.path().join("clients/python")));
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    assert!(
        wheel
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("entente_client-"),
        "{}",
        wheel.display()
    );

    // Installed into an environment of its own (grpcio and protobuf come from the
    // system's site packages), then imported from elsewhere.
    let venv = work.path().join("venv");
    run(Command::new("python3")
        .args(["-m", "venv", "--system-site-packages"])
        .arg(&venv));
    run(Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "-q", "--no-deps", "--no-index"])
        .arg(&wheel));
    let elsewhere = tempfile::tempdir().unwrap();
    let probe = "import entente_client, pathlib\n\
                 from entente_client._generated.entente.v1 import intel_pb2, intel_pb2_grpc\n\
                 print(pathlib.Path(entente_client.__file__).resolve())\n\
                 print(intel_pb2.QueryRequest.DESCRIPTOR.full_name)\n";
    let said = text(run(Command::new(venv.join("bin/python"))
        .args(["-c", probe])
        .current_dir(elsewhere.path())
        .env_remove("PYTHONPATH")));
    let mut lines = said.lines();
    let installed = PathBuf::from(lines.next().unwrap());
    assert!(
        installed.starts_with(venv.canonicalize().unwrap()),
        "imported from {} instead of the environment",
        installed.display()
    );
    assert_eq!(lines.next(), Some("entente.v1.QueryRequest"));
    let help = text(run(Command::new(venv.join("bin/entente-client"))
        .arg("--help")
        .current_dir(elsewhere.path())));
    assert!(help.contains("query"), "{help}");
}
