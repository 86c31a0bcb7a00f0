//! Payloads per provider: one [`Notification`] shaped as each chat tool's webhook documents it.
//!
//! - Slack incoming webhook: `text` (the notification fallback) + Block Kit `blocks` (header,
//!   section text, section fields, context), optional `channel`, `username`, `icon_emoji` /
//!   `icon_url`. Text is mrkdwn-escaped (`&`, `<`, `>`) so event content cannot ping `@channel`.
//! - Teams workflow webhook: `{"type":"message","attachments":[{"contentType":
//!   "application/vnd.microsoft.card.adaptive","content":<AdaptiveCard 1.4>}]}`.
//! - Teams legacy connector: a `MessageCard` (`@type`, `@context`, `summary`, `themeColor`,
//!   `title`, `sections[].facts`).
//! - Discord: `content`, `username`, `avatar_url`, one `embeds[]` entry with `title`,
//!   `description`, `color`, `fields`, `timestamp`; `allowed_mentions.parse = []`.
//! - Google Chat: `text` + `cardsV2[{cardId, card{header, sections[{widgets}]}}]`.
//! - Generic webhook: the CloudEvent as received (structured mode,
//!   `application/cloudevents+json`), signed `sha256=<hex HMAC-SHA256(body)>` in a header.
//!
//! Every text is cut to the documented limits, so a long reason never gets a post rejected.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::notification::Notification;
use crate::settings::{Provider, ProviderKind};

/// An HTTP body ready to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Request body.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (name, value), e.g. the signature.
    pub headers: Vec<(String, String)>,
}

impl Payload {
    fn json(value: &Value) -> Self {
        Self {
            body: value.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }
}

/// Builds the payload of `notification` for `provider`; `raw_event` is the CloudEvent JSON as
/// it came off the stream (the generic webhook posts it unchanged).
pub fn payload(provider: &Provider, notification: &Notification, raw_event: &[u8]) -> Payload {
    let n =
        notification.with_templates(provider.title_template.as_ref(), provider.template.as_ref());
    match provider.kind {
        ProviderKind::Slack => Payload::json(&slack(provider, &n)),
        ProviderKind::Teams => Payload::json(&teams(&n)),
        ProviderKind::TeamsLegacy => Payload::json(&teams_legacy(&n)),
        ProviderKind::Discord => Payload::json(&discord(provider, &n)),
        ProviderKind::GoogleChat => Payload::json(&google_chat(&n)),
        ProviderKind::Webhook => webhook(provider, raw_event),
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Slack's documented limits: header text 150, section text 3000, 10 fields of 2000.
fn slack(provider: &Provider, n: &Notification) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": cut(&format!("{} {}", n.severity.emoji(), n.title), 150), "emoji": true},
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&slack_escape(&n.text), 3000)},
        }),
    ];
    let fields: Vec<Value> = n
        .fields
        .iter()
        .take(10)
        .map(|(label, value)| {
            json!({"type": "mrkdwn", "text": cut(&format!("*{}*\n{}", slack_escape(label), slack_escape(value)), 2000)})
        })
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    if !n.metrics.is_empty() {
        let lines: Vec<String> = n
            .metrics
            .iter()
            .map(|m| format!("• {}", slack_escape(m)))
            .collect();
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&format!("*Metrics*\n{}", lines.join("\n")), 3000)},
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": cut(&format!("Run `{}` · event `{}`", slack_escape(&n.describe), slack_escape(&n.id)), 3000)}],
    }));
    let mut body = json!({
        // Slack shows `text` in notifications and where blocks cannot be rendered.
        "text": cut(&n.plain(), 3000),
        "blocks": blocks,
    });
    let extra = [
        ("channel", &provider.channel),
        ("username", &provider.username),
        ("icon_emoji", &provider.icon_emoji),
        ("icon_url", &provider.icon_url),
    ];
    for (key, value) in extra {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    body
}

fn adaptive_card(n: &Notification) -> Value {
    let color = match n.severity {
        crate::notification::Severity::Info => "Good",
        crate::notification::Severity::Warn => "Warning",
        crate::notification::Severity::Error => "Attention",
    };
    let facts: Vec<Value> = n
        .fields
        .iter()
        .map(|(label, value)| json!({"title": label, "value": value}))
        .collect();
    let mut body = vec![
        json!({"type": "TextBlock", "text": n.title, "weight": "Bolder", "size": "Medium", "color": color, "wrap": true}),
        json!({"type": "TextBlock", "text": n.text, "wrap": true}),
        json!({"type": "FactSet", "facts": facts}),
    ];
    if !n.metrics.is_empty() {
        let lines: Vec<String> = n.metrics.iter().map(|m| format!("- {m}")).collect();
        body.push(json!({"type": "TextBlock", "text": lines.join("\n"), "wrap": true}));
    }
    body.push(json!({"type": "TextBlock", "text": format!("Run: {}", n.describe), "fontType": "Monospace", "isSubtle": true, "wrap": true}));
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
    })
}

fn teams(n: &Notification) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": adaptive_card(n),
        }],
    })
}

fn teams_legacy(n: &Notification) -> Value {
    let mut facts: Vec<Value> = n
        .fields
        .iter()
        .map(|(label, value)| json!({"name": label, "value": value}))
        .collect();
    for m in &n.metrics {
        facts.push(json!({"name": "Metric", "value": m}));
    }
    facts.push(json!({"name": "Run", "value": n.describe}));
    json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": cut(&n.title, 200),
        "themeColor": n.severity.color_hex(),
        "title": n.title,
        "sections": [{
            "activityTitle": n.title,
            "text": n.text,
            "facts": facts,
        }],
    })
}

/// Discord's documented limits: content 2000, title 256, description 4096, 25 fields of
/// name 256 / value 1024.
fn discord(provider: &Provider, n: &Notification) -> Value {
    let mut fields: Vec<Value> = n
        .fields
        .iter()
        .map(|(label, value)| json!({"name": cut(label, 256), "value": cut(value, 1024), "inline": true}))
        .collect();
    if !n.metrics.is_empty() {
        fields.push(
            json!({"name": "Metrics", "value": cut(&n.metrics.join("\n"), 1024), "inline": false}),
        );
    }
    fields.push(
        json!({"name": "Run", "value": cut(&format!("`{}`", n.describe), 1024), "inline": false}),
    );
    fields.truncate(25);
    let mut embed = json!({
        "title": cut(&n.title, 256),
        "description": cut(&n.text, 4096),
        "color": n.severity.color_int(),
        "fields": fields,
        "footer": {"text": cut(&format!("event {}", n.id), 2048)},
    });
    if !n.time.is_empty() {
        embed["timestamp"] = json!(n.time);
    }
    let mut body = json!({
        "content": cut(&format!("{} {}", n.severity.emoji(), n.title), 2000),
        "embeds": [embed],
        // Event text must never ping @everyone or a role.
        "allowed_mentions": {"parse": []},
    });
    if let Some(username) = &provider.username {
        body["username"] = json!(cut(username, 80));
    }
    if let Some(url) = &provider.icon_url {
        body["avatar_url"] = json!(url);
    }
    body
}

fn google_chat(n: &Notification) -> Value {
    let mut widgets: Vec<Value> = vec![json!({"textParagraph": {"text": n.text}})];
    widgets.extend(
        n.fields
            .iter()
            .map(|(label, value)| json!({"decoratedText": {"topLabel": label, "text": value}})),
    );
    let mut sections = vec![json!({"widgets": widgets})];
    if !n.metrics.is_empty() {
        sections.push(json!({
            "header": "Metrics",
            "widgets": [{"textParagraph": {"text": n.metrics.join("<br>")}}],
        }));
    }
    sections.push(json!({
        "widgets": [{"decoratedText": {"topLabel": "Run", "text": n.describe}}],
    }));
    json!({
        "text": n.plain(),
        "cardsV2": [{
            // Unique per message; Chat only needs it to tell cards of one message apart.
            "cardId": format!("aviary-{}", n.id.replace('/', "-")),
            "card": {
                "header": {"title": n.title, "subtitle": format!("severity {}", n.severity.as_str())},
                "sections": sections,
            },
        }],
    })
}

/// `sha256=<lower-case hex of HMAC-SHA256(key, body)>`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn webhook(provider: &Provider, raw_event: &[u8]) -> Payload {
    let mut headers = Vec::new();
    if let Some(secret) = &provider.secret {
        headers.push((
            provider.signature_header.clone(),
            sign(secret.expose().as_bytes(), raw_event),
        ));
    }
    Payload {
        body: raw_event.to_vec(),
        content_type: "application/cloudevents+json",
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::tests::rolled_back;
    use crate::notification::{Notification, Severity};
    use crate::settings::Settings;
    use aviary_proto::events::EventKind;
    use std::path::Path;

    fn provider(yaml: &str) -> Provider {
        let s = Settings::from_yaml(yaml, Path::new("."), &|_| None).expect("config");
        s.providers.into_iter().next().expect("one provider")
    }

    fn build(p: &Provider) -> (Value, Notification) {
        let event = rolled_back();
        let n = Notification::new(&event, EventKind::RolledBack, Severity::Error, "eu-1");
        let raw = serde_json::to_vec(&event).expect("json");
        let payload = payload(p, &n, &raw);
        (serde_json::from_slice(&payload.body).expect("json body"), n)
    }

    #[test]
    fn slack_sets_channel_username_and_icon() {
        let p = provider(
            "providers: [{name: s, type: slack, url: 'https://x', channel: '#deploys', username: aviary, iconEmoji: ':bird:'}]",
        );
        let (v, _) = build(&p);
        assert_eq!(v["channel"], "#deploys");
        assert_eq!(v["username"], "aviary");
        assert_eq!(v["icon_emoji"], ":bird:");
        assert!(v.get("icon_url").is_none());
        assert_eq!(v["blocks"][0]["type"], "header");
    }

    #[test]
    fn slack_escapes_markup() {
        let p = provider(
            "providers: [{name: s, type: slack, url: 'https://x', template: '<!channel> {{rollout}} & co'}]",
        );
        let (v, _) = build(&p);
        let section = v["blocks"][1]["text"]["text"].as_str().expect("text");
        assert_eq!(section, "&lt;!channel&gt; test/podinfo &amp; co");
    }

    #[test]
    fn discord_never_pings_and_cuts_to_limits() {
        let p =
            provider("providers: [{name: d, type: discord, url: 'https://x', username: aviary}]");
        let mut event = rolled_back();
        event.data.reason = "x".repeat(5000);
        let n = Notification::new(&event, EventKind::Halted, Severity::Warn, "");
        let v: Value = serde_json::from_slice(&payload(&p, &n, b"{}").body).expect("json");
        assert_eq!(v["allowed_mentions"]["parse"], json!([]));
        let desc = v["embeds"][0]["description"].as_str().expect("description");
        assert!(desc.chars().count() <= 4096);
        for f in v["embeds"][0]["fields"].as_array().expect("fields") {
            assert!(f["value"].as_str().expect("value").chars().count() <= 1024);
        }
    }

    #[test]
    fn webhook_signs_the_raw_event() {
        let p = provider("providers: [{name: w, type: webhook, url: 'https://x', secret: key}]");
        let event = rolled_back();
        let raw = serde_json::to_vec(&event).expect("json");
        let n = Notification::new(&event, EventKind::RolledBack, Severity::Error, "");
        let out = payload(&p, &n, &raw);
        assert_eq!(out.body, raw);
        assert_eq!(out.content_type, "application/cloudevents+json");
        assert_eq!(
            out.headers,
            vec![("X-Aviary-Signature".to_owned(), sign(b"key", &raw))]
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 3), "hé…");
    }
}
