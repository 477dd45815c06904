//! Setting up without a running node: `entente init`, the `entente certs` commands and
//! `entente taxii hash-password`. Key files are written by `certs` with mode 0600 and
//! never printed; only their paths are.

use std::io::{BufRead, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{Output, print_json};
use crate::certs::{CertDir, Usage, Validity};
use crate::model::NodeId;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `entente init`: a starter configuration in `dir`, and with `with_certs` a federation
/// CA (unless one is there) and a node certificate.
pub fn init(dir: &Path, id: &NodeId, listen: &str, with_certs: bool, output: Output) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("entente.toml");
    if config_path.exists() {
        bail!("{} exists; refusing to overwrite it", config_path.display());
    }
    let mut created_ca = None;
    let mut issued = None;
    if with_certs {
        let certs = CertDir::new(dir.join("certs"));
        if !certs.ca_cert_path().exists() {
            certs.create_ca(
                &crate::certs::default_ca_name(),
                Validity::days_from_now(3650),
            )?;
            created_ca = Some(certs.ca_cert_path());
        }
        certs.issue(
            id,
            &Usage::Node {
                ips: vec![],
                dns: vec![],
            },
            Validity::days_from_now(397),
        )?;
        issued = Some(certs.cert_path(id.as_str()));
    }
    crate::transport::files::write_public_new(
        &config_path,
        crate::config::starter_config(id, listen, "certs").as_bytes(),
    )
    .with_context(|| format!("cannot write {}", config_path.display()))?;
    if output.is_json() {
        return print_json(&json!({
            "config": path(&config_path),
            "ca_cert": created_ca.as_deref().map(path),
            "node_cert": issued.as_deref().map(path),
        }));
    }
    if let Some(ca) = created_ca {
        println!("created federation CA {}", ca.display());
        eprintln!(
            "warning: the CA's private key is {}: move it off this node to the machine that keeps the CA (offline), and keep only ca.crt here",
            dir.join("certs").join("ca.key").display()
        );
    }
    if let Some(cert) = issued {
        println!("issued node certificate {}", cert.display());
    }
    println!("wrote {}", config_path.display());
    Ok(())
}

/// `entente certs ca`.
pub fn create_ca(dir: &Path, name: &str, days: u32, output: Output) -> Result<()> {
    let certs = CertDir::new(dir);
    certs.create_ca(name, Validity::days_from_now(days))?;
    if output.is_json() {
        return print_json(&json!({
            "ca_cert": path(&certs.ca_cert_path()),
            "ca_key": path(&dir.join("ca.key")),
        }));
    }
    println!(
        "created federation CA {} (key ca.key, mode 0600)",
        certs.ca_cert_path().display()
    );
    Ok(())
}

/// `entente certs node` and `entente certs client`: a certificate signed by the CA in
/// `dir`; for a client given `node` (HOST:PORT and id), also its client configuration.
pub fn issue(
    dir: &Path,
    id: &NodeId,
    usage: Usage,
    days: u32,
    node: Option<(String, NodeId)>,
    output: Output,
) -> Result<()> {
    let certs = CertDir::new(dir);
    let kind = match usage {
        Usage::Client => "client",
        Usage::Node { .. } => "node",
    };
    certs.issue(id, &usage, Validity::days_from_now(days))?;
    let revoked_before = warn_revoked_before(&certs, id)?;
    let mut config = None;
    if let Some((address, node_id)) = node {
        let file = dir.join(format!("{id}.toml"));
        crate::transport::files::write_public_new(
            &file,
            crate::config::starter_client_config(id, &address, &node_id).as_bytes(),
        )
        .with_context(|| format!("cannot write {}", file.display()))?;
        config = Some(file);
    }
    if output.is_json() {
        return print_json(&json!({
            "id": id.as_str(),
            "usage": kind,
            "cert": path(&certs.cert_path(id.as_str())),
            "key": path(&certs.key_path(id.as_str())),
            "client_config": config.as_deref().map(path),
            "revoked_before": revoked_before,
        }));
    }
    println!(
        "issued {kind} certificate {}",
        certs.cert_path(id.as_str()).display()
    );
    if let Some(file) = config {
        println!("wrote client configuration {}", file.display());
    }
    Ok(())
}

/// Prints (to stderr) a warning for each certificate of `id` the CA revoked before,
/// and returns them for JSON output.
fn warn_revoked_before(certs: &CertDir, id: &NodeId) -> Result<Vec<serde_json::Value>> {
    let revoked = certs.revoked_for(id)?;
    let mut found = Vec::with_capacity(revoked.len());
    for entry in &revoked {
        let at = entry
            .revoked_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        found.push(json!({"serial": entry.serial, "revoked_at": at}));
        eprintln!(
            "warning: {id} was revoked before (serial {}, at {at}); check that this request \
             comes from the member entitled to the id",
            entry.serial
        );
    }
    Ok(found)
}

/// `entente certs request`: a new key (or `key`) and a certificate signing request.
pub fn request(out: &Path, id: &NodeId, key: Option<&Path>, output: Output) -> Result<()> {
    let (csr, key) = crate::certs::write_request(out, id, key)?;
    if output.is_json() {
        return print_json(&json!({"id": id.as_str(), "csr": path(&csr), "key": path(&key)}));
    }
    println!(
        "wrote certificate request {} for key {} (keep the key here; send only the request to the CA)",
        csr.display(),
        key.display()
    );
    Ok(())
}

/// `entente certs sign`.
pub fn sign(
    dir: &Path,
    csr: &Path,
    usage: &Usage,
    expected: Option<&NodeId>,
    days: u32,
    output: Output,
) -> Result<()> {
    let certs = CertDir::new(dir);
    let signed = certs.sign(csr, usage, expected, Validity::days_from_now(days))?;
    let revoked_before = warn_revoked_before(&certs, &signed.id)?;
    if output.is_json() {
        return print_json(&json!({
            "id": signed.id.as_str(),
            "cert": path(&signed.cert),
            "previous": signed.previous.as_deref().map(path),
            "revoked_before": revoked_before,
        }));
    }
    println!(
        "issued certificate {} for {}; send it back to the member",
        signed.cert.display(),
        signed.id
    );
    if let Some(previous) = signed.previous {
        println!(
            "the previous certificate was kept as {}",
            previous.display()
        );
    }
    Ok(())
}

/// `entente certs renew`.
pub fn renew(dir: &Path, id: &NodeId, new_key: bool, days: u32, output: Output) -> Result<()> {
    let signed = CertDir::new(dir).renew(id, new_key, Validity::days_from_now(days))?;
    if output.is_json() {
        return print_json(&json!({
            "id": signed.id.as_str(),
            "cert": path(&signed.cert),
            "previous": signed.previous.as_deref().map(path),
            "new_key": new_key,
        }));
    }
    println!("renewed {id}: {}", signed.cert.display());
    if let Some(previous) = signed.previous {
        println!(
            "the previous certificate, kept as {}, stays valid until it expires",
            previous.display()
        );
    }
    println!(
        "install it where {id}'s key is; a node presents it from its next restart, a client from its next command"
    );
    Ok(())
}

/// Hands the CRL in `crl` to the node `settings` reaches: the node's id, and whether it
/// put the CRL in force (false: it had this one or a newer one already).
async fn hand_crl(settings: &crate::config::ClientSettings, crl: &Path) -> Result<(NodeId, bool)> {
    let crls = crate::transport::files::read_crls(crl)?;
    let Some(der) = crls.first() else {
        bail!("{} holds no CRL", crl.display());
    };
    let client = crate::client::NodeClient::connect_with(settings).await?;
    let applied = client.apply_crl(der.as_ref().to_vec()).await?;
    Ok((client.node().clone(), applied))
}

/// What a node did with a CRL handed to it, in words.
fn print_applied(node: &NodeId, applied: bool) {
    if applied {
        println!("{node} put the CRL in force and is offering it to its peers");
    } else {
        println!("{node} already has this CRL or a newer one in force");
    }
}

/// `entente certs push-crl`.
pub async fn push_crl(
    settings: &crate::config::ClientSettings,
    crl: &Path,
    output: Output,
) -> Result<()> {
    let (node, applied) = hand_crl(settings, crl).await?;
    if output.is_json() {
        return print_json(&json!({"node": node.as_str(), "applied": applied}));
    }
    print_applied(&node, applied);
    Ok(())
}

/// `entente certs revoke --push-to CONFIG`: the revocation, then its CRL handed to the
/// node `settings` names.
pub async fn revoke_and_push(
    dir: &Path,
    id: &NodeId,
    serial: Option<&str>,
    settings: &crate::config::ClientSettings,
    output: Output,
) -> Result<()> {
    let revocation = CertDir::new(dir).revoke_certificates(id, serial)?;
    let crl = revocation.crl;
    let (node, applied) = hand_crl(settings, &crl).await.with_context(|| {
        format!(
            "revoked {id} and wrote {}, but could not hand it to a node; run entente certs push-crl when one takes it",
            crl.display()
        )
    })?;
    if output.is_json() {
        return print_json(&json!({
            "revoked": id.as_str(),
            "serials": revocation.serials,
            "crl": path(&crl),
            "node": node.as_str(),
            "applied": applied,
        }));
    }
    print_revoked(id, &revocation.serials);
    println!("wrote {}", crl.display());
    print_applied(&node, applied);
    Ok(())
}

/// One line per certificate revoked.
fn print_revoked(id: &NodeId, serials: &[String]) {
    for serial in serials {
        println!("revoked {id} serial {serial}");
    }
}

/// `entente certs revoke`.
pub fn revoke(dir: &Path, id: &NodeId, serial: Option<&str>, output: Output) -> Result<()> {
    let revocation = CertDir::new(dir).revoke_certificates(id, serial)?;
    let crl = revocation.crl;
    if output.is_json() {
        return print_json(&json!({
            "revoked": id.as_str(),
            "serials": revocation.serials,
            "crl": path(&crl),
        }));
    }
    print_revoked(id, &revocation.serials);
    println!(
        "hand {} to one node (entente certs push-crl --config FILE {}), which passes it to its peers, or install it on every node (node.crls) and reload them",
        crl.display(),
        crl.display()
    );
    Ok(())
}

/// `entente taxii hash-password`: the password comes from standard input, never from
/// the command line (where other users could read it).
pub fn taxii_hash_password(output: Output) -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(1024)
        .read_line(&mut line)
        .context("read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    let hash = crate::taxii::hash_password(password).map_err(anyhow::Error::msg)?;
    if output.is_json() {
        return print_json(&json!({"password_hash": hash}));
    }
    println!("{hash}");
    Ok(())
}
