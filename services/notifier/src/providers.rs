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
//! - A rollout's own `event` webhook: Flagger's event payload, `{name, namespace, phase,
//!   metadata: {eventMessage, eventType, timestamp, ...}}` (Flagger's monitoring docs, "Event
//!   Webhook"), signed the same way when `eventWebhooks` has a secret.
//!
//! Every text is cut to the documented limits, so a long reason never gets a post rejected.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use aviary_proto::events::{AuditEvent, EventHook, EventKind};

use crate::notification::{Notification, Severity, classify};
use crate::settings::{EventWebhooks, Provider, ProviderKind};

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

/// Flagger's `event` webhook payload for `event` (of `kind`), posted to `hook`:
///
/// ```json
/// {"name": "podinfo", "namespace": "test", "phase": "Progressing",
///  "metadata": {"eventMessage": "...", "eventType": "Normal", "timestamp": "1767225600000",
///               "eventId": "test/podinfo/2/7", ...the hook's own metadata}}
/// ```
///
/// `eventType` is `Warning` for what the notifier would route at `warn` or above (halts,
/// rollbacks, an exceeded deadline, an abort) and for refused calls, `Normal` otherwise, as
/// Flagger's Kubernetes event types. `timestamp` is the event's own time in Unix milliseconds
/// (a string, as Flagger sends it), so a retried post says when it happened, not when it was
/// sent. `eventId` lets a receiver de-duplicate. The hook's metadata is merged in; the keys
/// above win over it.
pub fn event_hook(
    hook: &EventHook,
    event: &AuditEvent,
    kind: EventKind,
    signing: &EventWebhooks,
) -> Payload {
    let d = &event.data;
    let severity = classify(kind, &d.reason, true);
    let warning = kind == EventKind::Refused || severity.is_some_and(|s| s >= Severity::Warn);
    let n = Notification::new(event, kind, severity.unwrap_or(Severity::Info), "");
    let message = n.text.lines().next().unwrap_or_default().to_owned();
    let timestamp = unix_millis(&event.time).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default()
    });
    let mut metadata: serde_json::Map<String, Value> = hook
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    metadata.insert("eventMessage".into(), Value::String(message));
    metadata.insert(
        "eventType".into(),
        Value::String(if warning { "Warning" } else { "Normal" }.into()),
    );
    metadata.insert("timestamp".into(), Value::String(timestamp.to_string()));
    metadata.insert("eventId".into(), Value::String(event.id.clone()));
    let body = json!({
        "name": d.name,
        "namespace": d.namespace,
        "phase": d.phase,
        "metadata": metadata,
    });
    let mut payload = Payload::json(&body);
    if let Some(secret) = &signing.secret {
        payload.headers.push((
            signing.signature_header.clone(),
            sign(secret.expose().as_bytes(), &payload.body),
        ));
    }
    payload
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time as the scheduler writes it
/// (`2026-01-01T00:00:00.000Z`, fraction optional); `None` for anything else.
fn unix_millis(time: &str) -> Option<u64> {
    let num = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let rest = time.strip_suffix('Z')?;
    let (date, clock) = rest.split_once('T')?;
    let mut ymd = date.splitn(3, '-');
    let (y, m, d) = (num(ymd.next()?)?, num(ymd.next()?)?, num(ymd.next()?)?);
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.splitn(3, ':');
    let (hh, mm, ss) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        num(&digits)?
    };
    // Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000 + millis).ok()
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
    fn rfc3339_times_become_unix_millis() {
        assert_eq!(unix_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_millis("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            unix_millis("2000-02-29T00:00:00.000Z"),
            Some(951_782_400_000)
        );
        assert_eq!(unix_millis("2026-01-01T00:00:00Z"), Some(1_767_225_600_000));
        assert_eq!(unix_millis("2026-01-01 00:00:00"), None);
        assert_eq!(unix_millis("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn event_hook_payload_is_flaggers_with_the_hook_metadata() {
        let event = rolled_back();
        let hook = EventHook {
            name: "log".into(),
            url: "http://x".into(),
            timeout_ms: None,
            metadata: [
                ("team".to_owned(), "edge".to_owned()),
                ("eventType".to_owned(), "spoofed".to_owned()),
            ]
            .into_iter()
            .collect(),
        };
        let signing = EventWebhooks {
            secret: Some(crate::settings::Secret::new("key")),
            ..EventWebhooks::default()
        };
        let p = event_hook(&hook, &event, EventKind::RolledBack, &signing);
        assert_eq!(p.content_type, "application/json");
        let v: Value = serde_json::from_slice(&p.body).expect("json");
        assert_eq!(v["name"], event.data.name.as_str());
        assert_eq!(v["namespace"], event.data.namespace.as_str());
        assert_eq!(v["phase"], event.data.phase.as_str());
        assert_eq!(v["metadata"]["eventType"], "Warning");
        assert_eq!(v["metadata"]["team"], "edge");
        assert_eq!(v["metadata"]["eventId"], event.id.as_str());
        assert!(
            v["metadata"]["eventMessage"]
                .as_str()
                .is_some_and(|m| m.starts_with("Rolled back")),
            "{v}"
        );
        assert!(
            v["metadata"]["timestamp"]
                .as_str()
                .is_some_and(|t| t.parse::<u64>().is_ok())
        );
        assert_eq!(
            p.headers,
            vec![("X-Aviary-Signature".to_owned(), sign(b"key", &p.body))]
        );
        let normal = event_hook(
            &hook,
            &event,
            EventKind::StepAdvanced,
            &EventWebhooks::default(),
        );
        let v: Value = serde_json::from_slice(&normal.body).expect("json");
        assert_eq!(v["metadata"]["eventType"], "Normal");
        assert!(normal.headers.is_empty());
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
