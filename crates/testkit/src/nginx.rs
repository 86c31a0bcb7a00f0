//! A real NGINX for one test: master + one worker in the foreground, every path in a temporary
//! directory, the `http` block including a file the router agent owns (`include_path`).
//!
//! The include starts as a server on the ephemeral listen port answering 503, so readiness is
//! "the listen port answers HTTP".

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{Process, free_port, tool_path};
use crate::{Result, TestkitError};

const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A running NGINX.
#[derive(Debug)]
pub struct Nginx {
    process: Process,
    bin: PathBuf,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts NGINX with an empty-ish include and waits until its port answers.
    ///
    /// The binary is `$AVIARY_NGINX`, else `.tools/bin/nginx`, else `/usr/sbin/nginx`.
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`], [`TestkitError::Exited`], [`TestkitError::NotReady`].
    pub async fn start() -> Result<Self> {
        let bin = tool_path("nginx")?;
        let dir = tempfile::Builder::new()
            .prefix("aviary-nginx-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temp dir", e))?;
        let port = free_port()?;
        let root = dir.path();
        let include = root.join("aviary.conf");
        std::fs::write(
            &include,
            format!("server {{\n    listen 127.0.0.1:{port};\n    return 503;\n}}\n"),
        )
        .map_err(|e| TestkitError::io("writing the nginx include", e))?;
        // Workers of a root master run as `nobody` unless told otherwise; keep them as us so
        // they can use the temp directory.
        let user = if running_as_root() {
            "user root root;\n"
        } else {
            ""
        };
        let main = format!(
            "{user}daemon off;\nmaster_process on;\nworker_processes 1;\npid {root}/nginx.pid;\n\
             error_log {root}/error.log notice;\nevents {{\n    worker_connections 256;\n}}\n\
             http {{\n    access_log off;\n    client_body_temp_path {root}/body;\n    \
             proxy_temp_path {root}/proxy;\n    fastcgi_temp_path {root}/fastcgi;\n    \
             uwsgi_temp_path {root}/uwsgi;\n    scgi_temp_path {root}/scgi;\n    \
             include {include};\n}}\n",
            root = root.display(),
            include = include.display()
        );
        std::fs::write(root.join("nginx.conf"), main)
            .map_err(|e| TestkitError::io("writing nginx.conf", e))?;
        let args: Vec<std::ffi::OsString> = vec![
            "-p".into(),
            root.into(),
            "-c".into(),
            root.join("nginx.conf").into(),
        ];
        let mut process = Process::spawn("nginx", &bin, args, &root.join("stdout.log"))?;
        process
            .wait_ready(READY_DEADLINE, || async move { answers_http(port).await })
            .await?;
        Ok(Self {
            process,
            bin,
            port,
            dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listen address for the router agent's `listen` setting.
    pub fn listen(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The nginx binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The main configuration.
    pub fn main_conf(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// The file the router agent rewrites.
    pub fn include_path(&self) -> PathBuf {
        self.dir.path().join("aviary.conf")
    }

    /// The `-p` prefix.
    pub fn prefix(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            + &self.process.log()
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn answers_http(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Ok(true))
    )
}
