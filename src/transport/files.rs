//! Reading PEM certificates, private keys and CRLs from files, with the checks an
//! operator expects: clear errors naming the file, and private keys refused when
//! their permissions let anyone but the owner read them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Largest PEM file accepted (certificates, keys, CRLs); far above any real one.
pub const MAX_PEM_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a certificate, key or CRL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{path} is larger than {MAX_PEM_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file does not contain the PEM blocks expected.
    #[error("{path}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A private key file is readable or writable by group or others.
    #[error(
        "private key {path} has mode {mode:04o}: it must be readable by its owner only (chmod 600 {path})"
    )]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl FileError {
    /// The file concerned.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Read { path, .. }
            | FileError::TooLarge { path }
            | FileError::Malformed { path, .. }
            | FileError::KeyPermissions { path, .. } => path,
        }
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, FileError> {
    let read_err = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    match crate::util::read_small_file(path, MAX_PEM_FILE_BYTES) {
        Ok(bytes) => Ok(bytes),
        Err(crate::util::SmallFileError::Io(e)) => Err(read_err(e)),
        Err(crate::util::SmallFileError::TooLarge) => Err(FileError::TooLarge {
            path: path.to_owned(),
        }),
        Err(crate::util::SmallFileError::NotAFile) => Err(FileError::Malformed {
            path: path.to_owned(),
            problem: "not a regular file (a FIFO, a device or a directory)".into(),
        }),
    }
}

/// Reads every certificate in a PEM file; at least one must be present.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::Malformed {
            path: path.to_owned(),
            problem: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(FileError::Malformed {
            path: path.to_owned(),
            problem: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Checks that a private key file is readable by its owner only.
pub fn check_key_permissions(path: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FileError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads the private key in a PEM file after checking its permissions.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    check_key_permissions(path)?;
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| FileError::Malformed {
        path: path.to_owned(),
        problem: format!("no usable private key: {e}"),
    })
}

/// Reads the private key PEM text after checking its permissions.
pub fn read_private_key_pem(path: &Path) -> Result<String, FileError> {
    check_key_permissions(path)?;
    let bytes = read_bounded(path)?;
    String::from_utf8(bytes).map_err(|_| FileError::Malformed {
        path: path.to_owned(),
        problem: "not a PEM text file".into(),
    })
}

/// Reads every CRL in a PEM file; at least one must be present.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, FileError> {
    let bytes = read_bounded(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::Malformed {
            path: path.to_owned(),
            problem: format!("not a PEM CRL file: {e}"),
        })?;
    if crls.is_empty() {
        return Err(FileError::Malformed {
            path: path.to_owned(),
            problem: "no X509 CRL block found".into(),
        });
    }
    Ok(crls)
}

/// Writes a file readable by its owner only, refusing to replace an existing one.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes a public file (certificate, CRL, config), refusing to replace an existing one.
pub fn write_public_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Replaces a public file atomically (write to a temporary name, then rename).
pub fn replace_public(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)
}
