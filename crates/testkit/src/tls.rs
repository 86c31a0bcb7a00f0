//! A throw-away PKI for TLS tests, made with `openssl`: a CA, a server certificate for
//! `localhost`/`127.0.0.1` and a client certificate for mutual TLS, all valid for one day.
//!
//! Files in `dir`: `ca.pem`/`ca.key`, `server.pem`/`server.key`, `client.pem`/`client.key`.

use std::path::Path;
use std::process::Command;

use crate::{Result, TestkitError};

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| TestkitError::io("running openssl", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(TestkitError::io(
        format!("openssl {args:?}"),
        std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
    ))
}

/// Writes the CA, server and client certificates and keys into `dir`.
///
/// # Errors
/// `openssl` is missing or fails; a file cannot be written.
pub fn make_pki(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=aviary-test-ca",
        ],
    )?;
    for (name, ext) in [
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let (subject, extfile) = (format!("/CN={name}"), format!("{name}.ext"));
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                &subject,
            ],
        )?;
        std::fs::write(dir.join(&extfile), format!("{ext}\n"))
            .map_err(|e| TestkitError::io(format!("writing {extfile}"), e))?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &extfile,
            ],
        )?;
    }
    Ok(())
}
