//! The WebDriver client against a real headless Chromium: a page served on loopback is
//! navigated, read, clicked, scripted and photographed.

#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::time::Duration;

use aviary_testkit::browser::Browser;
use aviary_testkit::eventually;

const PAGE: &str = "<!doctype html><html><head><title>t</title></head><body>\
    <p id=count>0</p><ul><li class=item>a</li><li class=item>b</li></ul>\
    <input id=name><button id=more>more</button><p id=hidden hidden>secret</p>\
    <script>document.getElementById('more').onclick = () => {\
      const p = document.getElementById('count'); p.textContent = Number(p.textContent) + 1; };\
    </script></body></html>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_chromium_is_driven_over_webdriver() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = Browser::start().await.unwrap();
    browser.goto(&url).await.unwrap();
    let count = browser.find("#count").await.unwrap().expect("#count");
    assert_eq!(browser.text(&count).await.unwrap(), "0");
    assert_eq!(browser.find("#nothing-here").await.unwrap(), None);
    let items = browser.find_all("li.item").await.unwrap();
    let mut texts = Vec::new();
    for item in &items {
        texts.push(browser.text(item).await.unwrap());
    }
    assert_eq!(texts, ["a", "b"]);
    let hidden = browser.find("#hidden").await.unwrap().expect("#hidden");
    assert_eq!(
        browser.text(&hidden).await.unwrap(),
        "",
        "hidden text is not shown"
    );

    let more = browser.find("#more").await.unwrap().expect("#more");
    browser.click(&more).await.unwrap();
    browser.click(&more).await.unwrap();
    eventually(Duration::from_secs(10), "two clicks counted", || async {
        let count = browser.find("#count").await.ok()??;
        (browser.text(&count).await.ok()? == "2").then_some(())
    })
    .await;

    let name = browser.find("#name").await.unwrap().expect("#name");
    browser.type_text(&name, "aviary").await.unwrap();
    let value = browser
        .execute(
            "return [document.getElementById(arguments[0]).value, document.title];",
            &[serde_json::json!("name")],
        )
        .await
        .unwrap();
    assert_eq!(value, serde_json::json!(["aviary", "t"]));
    let thrown = browser.execute("throw new Error('boom')", &[]).await;
    assert!(
        matches!(&thrown, Err(aviary_testkit::TestkitError::WebDriver { error, .. }) if error == "javascript error"),
        "{thrown:?}"
    );

    browser.set_window_size(900, 700).await.unwrap();
    let width = browser
        .execute("return window.innerWidth;", &[])
        .await
        .unwrap();
    assert!(
        width.as_u64().is_some_and(|w| w > 800 && w <= 900),
        "{width}"
    );

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("page.png");
    browser.screenshot(&png).await.unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
}
