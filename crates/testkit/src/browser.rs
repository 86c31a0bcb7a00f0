//! A real headless Chromium for one test, driven over W3C WebDriver by a `chromedriver` on an
//! ephemeral port (Debian's `chromium` and `chromium-driver`), with an empty profile in a
//! temporary directory; the session is deleted and chromedriver killed on drop.
//!
//! The client is the few WebDriver commands page tests need: navigate, find elements by CSS,
//! click, read text, run a script, take a screenshot. Waiting for the page is the test's job:
//! poll with [`crate::eventually`] (a script or a find in a loop), never sleep.
//!
//! ```no_run
//! # async fn t() -> aviary_testkit::Result<()> {
//! use aviary_testkit::browser::Browser;
//! let browser = Browser::start().await?;
//! browser.goto("http://127.0.0.1:8470/").await?;
//! let title = browser.execute("return document.title", &[]).await?;
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::process::{Process, free_port, tool_path};
use crate::{Result, TestkitError};

/// How long chromedriver may take to answer `/status` (well under a second normally; the rest
/// is margin for a machine busy compiling).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long one WebDriver command may take: a new session starts Chromium, which on two busy
/// cores can take a while.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The key of an element reference in WebDriver's JSON (the W3C spec fixes it).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's flags: headless, no sandbox (tests may run as root in a container), and nothing
/// that reaches the network on its own (updates, sync, first-run pages).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
];

/// An element of the current page, as WebDriver names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

/// A Chromium session behind its own chromedriver.
#[derive(Debug)]
pub struct Browser {
    // Declared first: dropped (killed) before the directories are removed.
    driver: Process,
    http: reqwest::Client,
    port: u16,
    session: String,
    _profile: TempDir,
    _dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session with a fresh headless Chromium.
    ///
    /// # Errors
    /// [`TestkitError::ToolNotFound`] without `chromedriver` or `chromium`; the errors of a
    /// process that does not get ready; [`TestkitError::WebDriver`] when the session is
    /// refused (Chromium did not start).
    pub async fn start() -> Result<Self> {
        let driver_bin = tool_path("chromedriver")?;
        let chromium = tool_path("chromium")?;
        let dir = tempfile::Builder::new()
            .prefix("aviary-browser-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the browser's temp dir", e))?;
        let profile = tempfile::Builder::new()
            .prefix("aviary-chromium-profile-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the Chromium profile dir", e))?;
        let port = free_port()?;
        let mut driver = Process::spawn(
            "chromedriver",
            &driver_bin,
            [
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ],
            &dir.path().join("chromedriver.log"),
        )?;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|e| TestkitError::Connect {
                url: format!("http://127.0.0.1:{port}"),
                reason: e.to_string(),
            })?;
        let status = format!("http://127.0.0.1:{port}/status");
        driver
            .wait_ready(READY_DEADLINE, || {
                let (http, url) = (http.clone(), status.clone());
                async move {
                    let Ok(response) = http.get(&url).send().await else {
                        return false;
                    };
                    let body: Value = response.json().await.unwrap_or_default();
                    body["value"]["ready"] == json!(true)
                }
            })
            .await?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    }
                }
            }
        });
        let mut browser = Self {
            driver,
            http,
            port,
            session: String::new(),
            _profile: profile,
            _dir: dir,
        };
        let created = browser
            .command(reqwest::Method::POST, "/session", Some(capabilities))
            .await?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| webdriver_error("new session", "no sessionId in the answer"))?
            .to_owned();
        Ok(browser)
    }

    /// Sends one command (`path` under the server; `/session/{id}/...` for session commands)
    /// and returns its `value`.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == reqwest::Method::POST {
            request = request.json(&json!({}));
        }
        let response = request
            .send()
            .await
            .map_err(|e| webdriver_error(path, &e.to_string()))?;
        let ok = response.status().is_success();
        let body: Value = response
            .json()
            .await
            .map_err(|e| webdriver_error(path, &format!("answer is not JSON: {e}")))?;
        let value = body.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            Err(TestkitError::WebDriver {
                command: path.to_owned(),
                error: value["error"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_owned(),
                message: value["message"].as_str().unwrap_or("").to_owned(),
            })
        }
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits until the page has loaded (WebDriver's navigate does).
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`] when navigation fails.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )
        .await
        .map(drop)
    }

    /// The first element matching the CSS selector `css`, or `None` when there is none now.
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`] for any failure but "no such element".
    pub async fn find(&self, css: &str) -> Result<Option<Element>> {
        let found = self
            .command(
                reqwest::Method::POST,
                &self.session_path("/element"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        match found {
            Ok(value) => element(&value).map(Some),
            Err(TestkitError::WebDriver { error, .. }) if error == "no such element" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every element matching the CSS selector `css`, in document order.
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`].
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let value = self
            .command(
                reqwest::Method::POST,
                &self.session_path("/elements"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        value
            .as_array()
            .map(|all| all.iter().map(element).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Clicks `element` as a user would (it must be visible and not covered).
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`], e.g. "element not interactable" for a hidden one.
    pub async fn click(&self, element: &Element) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{}/click", element.0)),
            None,
        )
        .await
        .map(drop)
    }

    /// The rendered text of `element` (empty for a hidden one, as a user sees it).
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`], e.g. "stale element reference" once the page replaced it.
    pub async fn text(&self, element: &Element) -> Result<String> {
        let value = self
            .command(
                reqwest::Method::GET,
                &self.session_path(&format!("/element/{}/text", element.0)),
                None,
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Types `text` into `element` (an input).
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`].
    pub async fn type_text(&self, element: &Element, text: &str) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{}/value", element.0)),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and returns what
    /// it returns.
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`], e.g. "javascript error" when the script throws.
    pub async fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Resizes the window to `width` × `height` CSS pixels (a taller window shows more of a
    /// page in a screenshot).
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`].
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/window/rect"),
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(drop)
    }

    /// Saves a PNG of the window to `path`.
    ///
    /// # Errors
    /// [`TestkitError::WebDriver`]; [`TestkitError::Io`] when the file cannot be written.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let value = self
            .command(
                reqwest::Method::GET,
                &self.session_path("/screenshot"),
                None,
            )
            .await?;
        let png = value
            .as_str()
            .and_then(base64_decode)
            .ok_or_else(|| webdriver_error("screenshot", "the answer is not base64"))?;
        std::fs::write(path, png)
            .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))
    }

    /// Chromedriver's log so far.
    pub fn log(&self) -> String {
        self.driver.log()
    }
}

impl Drop for Browser {
    /// Ends the session, so chromedriver closes Chromium (killing chromedriver alone would
    /// leave Chromium running), then chromedriver is killed with its [`Process`].
    fn drop(&mut self) {
        if self.session.is_empty() {
            return;
        }
        // Blocking and by hand: no async runtime may be left to run a request in a drop.
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.port
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
        }
    }
}

fn webdriver_error(command: &str, message: &str) -> TestkitError {
    TestkitError::WebDriver {
        command: command.to_owned(),
        error: "unexpected answer".to_owned(),
        message: message.to_owned(),
    }
}

fn element(value: &Value) -> Result<Element> {
    value[ELEMENT_KEY]
        .as_str()
        .map(|id| Element(id.to_owned()))
        .ok_or_else(|| webdriver_error("find element", "no element reference in the answer"))
}

/// Standard base64 (with or without padding) to bytes; `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let digits = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= sextet(*c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(base64_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            base64_decode("iVBO\nRw0K").as_deref(),
            Some(&b"\x89PNG\r\n"[..])
        );
        assert_eq!(base64_decode("a$==").as_deref(), None);
    }
}
