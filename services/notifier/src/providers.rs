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
//!   `application/cloudevents+json`), signed when it has a secret.
//! - A rollout's own `event` webhook: Flagger's event payload, `{name, namespace, phase,
//!   metadata: {eventMessage, eventType, timestamp, ...}}` (Flagger's monitoring docs, "Event
//!   Webhook"), signed the same way when `eventWebhooks` has a secret.
//!
//! A signed post carries `X-Aviary-Signature: t=<unix seconds>,kid=<key id>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">` ([`aviary_runtime::signature`]), computed by the sender at
//! each attempt, so a retry is signed with the time it is sent.
//!
//! Every text is cut to the documented limits, so a long reason never gets a post rejected.

use serde_json::{Value, json};

use aviary_proto::events::{AuditEvent, EventHook, EventKind};

use crate::notification::{Notification, Severity, classify};
use crate::settings::{EventWebhooks, Provider, ProviderKind, Signing};

/// An HTTP body ready to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Request body.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (name, value).
    pub headers: Vec<(String, String)>,
    /// How each attempt is signed, if at all.
    pub signing: Option<Signing>,
}

impl Payload {
    fn json(value: &Value) -> Self {
        Self {
            body: value.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
            signing: None,
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

/// Zero-width space: put inside mention markup, it leaves the text readable and the markup inert.
const ZWSP: char = '\u{200B}';

/// Inserts a zero-width space after every `<` (or `@`) that starts one of `prefixes`
/// (ASCII case-insensitive), so chat tools show the markup instead of acting on it.
fn defuse(s: &str, lead: char, prefixes: &[&str]) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        out.push(c);
        if c == lead {
            let rest = &s.as_bytes()[i + c.len_utf8()..];
            let hit = prefixes.iter().any(|p| {
                rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            });
            if hit {
                out.push(ZWSP);
            }
        }
    }
    out
}

/// Escapes `&`, `<`, `>` as Slack documents ("Escaping text"), so no `<!channel>`, `<!here>`,
/// `<!everyone>`, `<@U…>`, `<#C…>` or link survives, and cuts the *escaped* text to `max`
/// characters without splitting an entity.
fn slack_text(s: &str, max: usize) -> String {
    let escaped_len = |c: char| match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    };
    let total: usize = s.chars().map(escaped_len).sum();
    let budget = if total <= max {
        max
    } else {
        max.saturating_sub(1)
    };
    let mut out = String::with_capacity(s.len().min(max * 4));
    let mut used = 0;
    for c in s.chars() {
        let n = escaped_len(c);
        if used + n > budget {
            out.push('…');
            return out;
        }
        used += n;
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Builds a body with a per-text cap of `cap` characters, halving the cap until the JSON body
/// is at most `max_bytes` (Teams and Google Chat limit the whole message in bytes, and a
/// character may take up to 6 bytes once JSON-escaped).
fn fit(max_bytes: usize, build: impl Fn(usize) -> Value) -> Value {
    let mut cap = 4096;
    loop {
        let body = build(cap);
        if cap <= 16 || body.to_string().len() <= max_bytes {
            return body;
        }
        cap /= 2;
    }
}

/// Slack's documented limits (Block Kit reference): header `plain_text` 150, section text
/// 3000, at most 10 section fields of 2000 each, context element text 3000; the message
/// `text` is cut to 3000 as well (Slack truncates it at 40 000).
const SLACK_HEADER: usize = 150;
const SLACK_TEXT: usize = 3000;
const SLACK_FIELDS: usize = 10;
const SLACK_FIELD: usize = 2000;

fn slack(provider: &Provider, n: &Notification) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": slack_text(&format!("{} {}", n.severity.emoji(), n.title), SLACK_HEADER), "emoji": true},
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": slack_text(&n.text, SLACK_TEXT)},
        }),
    ];
    let fields: Vec<Value> = n
        .fields
        .iter()
        .take(SLACK_FIELDS)
        .map(|(label, value)| {
            // The label is cut first so the value always has room; `*…*` is Slack's bold.
            let label = slack_text(label, 200);
            let value = slack_text(value, SLACK_FIELD - label.chars().count() - 3);
            json!({"type": "mrkdwn", "text": format!("*{label}*\n{value}")})
        })
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if !n.metrics.is_empty() {
        let lines: Vec<String> = n.metrics.iter().map(|m| format!("• {m}")).collect();
        let text = slack_text(&lines.join("\n"), SLACK_TEXT - "*Metrics*\n".len());
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("*Metrics*\n{text}")},
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": slack_text(&format!("Run `{}` · event `{}`", n.describe, n.id), SLACK_TEXT)}],
    }));
    let mut body = json!({
        // Slack shows `text` in notifications and where blocks cannot be rendered; it is
        // parsed for mentions like any mrkdwn, so it is escaped too.
        "text": slack_text(&n.plain(), SLACK_TEXT),
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

/// Teams posts (workflow webhooks and connectors) are limited to about 28 KB; the margin
/// leaves room for what the service wraps around the card.
const TEAMS_MAX_BYTES: usize = 27_000;

/// Teams only turns `<at>name</at>` into a mention with a matching `msteams.entities` entry,
/// which Aviary never sends; the markup is defused anyway so it shows as text.
fn teams_text(s: &str, cap: usize) -> String {
    cut(&defuse(s, '<', &["at>", "at ", "/at>"]), cap)
}

fn adaptive_card(n: &Notification, cap: usize) -> Value {
    let color = match n.severity {
        crate::notification::Severity::Info => "Good",
        crate::notification::Severity::Warn => "Warning",
        crate::notification::Severity::Error => "Attention",
    };
    let facts: Vec<Value> = n
        .fields
        .iter()
        .take(25)
        .map(|(label, value)| json!({"title": teams_text(label, 256.min(cap)), "value": teams_text(value, cap)}))
        .collect();
    let mut body = vec![
        json!({"type": "TextBlock", "text": teams_text(&n.title, 256.min(cap)), "weight": "Bolder", "size": "Medium", "color": color, "wrap": true}),
        json!({"type": "TextBlock", "text": teams_text(&n.text, cap), "wrap": true}),
        json!({"type": "FactSet", "facts": facts}),
    ];
    if !n.metrics.is_empty() {
        let lines: Vec<String> = n.metrics.iter().map(|m| format!("- {m}")).collect();
        body.push(
            json!({"type": "TextBlock", "text": teams_text(&lines.join("\n"), cap), "wrap": true}),
        );
    }
    body.push(json!({"type": "TextBlock", "text": teams_text(&format!("Run: {}", n.describe), cap), "fontType": "Monospace", "isSubtle": true, "wrap": true}));
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
    })
}

fn teams(n: &Notification) -> Value {
    fit(TEAMS_MAX_BYTES, |cap| {
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": adaptive_card(n, cap),
            }],
        })
    })
}

fn teams_legacy(n: &Notification) -> Value {
    fit(TEAMS_MAX_BYTES, |cap| {
        let mut facts: Vec<Value> = n
            .fields
            .iter()
            .take(25)
            .map(|(label, value)| json!({"name": teams_text(label, 256.min(cap)), "value": teams_text(value, cap)}))
            .collect();
        if !n.metrics.is_empty() {
            facts.push(json!({"name": "Metrics", "value": teams_text(&n.metrics.join("\n"), cap)}));
        }
        facts.push(json!({"name": "Run", "value": teams_text(&n.describe, cap)}));
        let title = teams_text(&n.title, 256.min(cap));
        json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": teams_text(&n.title, 200.min(cap)),
            "themeColor": n.severity.color_hex(),
            "title": title,
            "sections": [{
                "activityTitle": title,
                "text": teams_text(&n.text, cap),
                "facts": facts,
            }],
        })
    })
}

/// Discord's documented limits (Embed Limits): content 2000; embed title 256, description
/// 4096, at most 25 fields of name 256 / value 1024, footer text 2048, and 6000 characters
/// in total across title, description, field names and values, footer and author name.
const DISCORD_CONTENT: usize = 2000;
const DISCORD_TITLE: usize = 256;
const DISCORD_DESCRIPTION: usize = 4096;
const DISCORD_FIELDS: usize = 25;
const DISCORD_FIELD_NAME: usize = 256;
const DISCORD_FIELD_VALUE: usize = 1024;
const DISCORD_FOOTER: usize = 2048;
const DISCORD_EMBED_TOTAL: usize = 6000;

/// `allowed_mentions.parse = []` already stops pings; the text is defused as well so a
/// `@everyone` or `<@123>` never even renders as a mention.
fn discord_text(s: &str, max: usize) -> String {
    let s = defuse(s, '@', &["everyone", "here"]);
    cut(&defuse(&s, '<', &["@", "#", "/"]), max)
}

fn discord(provider: &Provider, n: &Notification) -> Value {
    let len = |s: &str| s.chars().count();
    let title = discord_text(&n.title, DISCORD_TITLE);
    let footer = discord_text(&format!("event {}", n.id), DISCORD_FOOTER);
    let mut budget = DISCORD_EMBED_TOTAL - len(&title) - len(&footer);
    let mut candidates: Vec<(String, String, bool)> = n
        .fields
        .iter()
        .map(|(label, value)| (label.clone(), value.clone(), true))
        .collect();
    if !n.metrics.is_empty() {
        candidates.push(("Metrics".into(), n.metrics.join("\n"), false));
    }
    candidates.push(("Run".into(), format!("`{}`", n.describe), false));
    // The description keeps up to 1024 characters whatever the fields take.
    let reserve = len(&n.text).min(DISCORD_FIELD_VALUE);
    let mut field_budget = budget.saturating_sub(reserve);
    let mut fields = Vec::new();
    for (name, value, inline) in candidates.into_iter().take(DISCORD_FIELDS) {
        let name = discord_text(&name, DISCORD_FIELD_NAME.min(field_budget));
        let value_max = DISCORD_FIELD_VALUE.min(field_budget.saturating_sub(len(&name)));
        // Discord rejects empty names and values; a field that no longer fits is dropped.
        if name.is_empty() || value_max < 2 {
            break;
        }
        let value = discord_text(&value, value_max);
        let used = len(&name) + len(&value);
        field_budget -= used;
        budget -= used;
        fields.push(json!({"name": name, "value": value, "inline": inline}));
    }
    let mut embed = json!({
        "title": title,
        "description": discord_text(&n.text, DISCORD_DESCRIPTION.min(budget)),
        "color": n.severity.color_int(),
        "fields": fields,
        "footer": {"text": footer},
    });
    if !n.time.is_empty() {
        embed["timestamp"] = json!(n.time);
    }
    let mut body = json!({
        "content": discord_text(&format!("{} {}", n.severity.emoji(), n.title), DISCORD_CONTENT),
        "embeds": [embed],
        // Event text must never ping @everyone, a user or a role.
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

/// Google Chat: a message (text and cards) is at most 32 000 bytes, a card at most 32 KB
/// (Chat API, "Send a message", `CardWithId`); the text itself is cut to 4096 characters.
const GOOGLE_CHAT_MAX_BYTES: usize = 32_000;

/// `<users/all>` and `<users/123>` mention people in a Chat message's `text`: defused.
fn google_chat_text(s: &str, cap: usize) -> String {
    cut(&defuse(s, '<', &["users/"]), cap)
}

/// Card text widgets take a subset of HTML: event text is HTML-escaped, so it can neither
/// mention anyone nor inject markup.
fn google_card_text(s: &str, cap: usize) -> String {
    let s = cut(s, cap);
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn google_chat(n: &Notification) -> Value {
    fit(GOOGLE_CHAT_MAX_BYTES, |cap| {
        let mut widgets: Vec<Value> =
            vec![json!({"textParagraph": {"text": google_card_text(&n.text, cap)}})];
        widgets.extend(n.fields.iter().take(25).map(|(label, value)| {
            json!({"decoratedText": {"topLabel": google_card_text(label, 256.min(cap)), "text": google_card_text(value, cap)}})
        }));
        let mut sections = vec![json!({"widgets": widgets})];
        if !n.metrics.is_empty() {
            let lines: Vec<String> = n.metrics.iter().map(|m| google_card_text(m, cap)).collect();
            sections.push(json!({
                "header": "Metrics",
                "widgets": [{"textParagraph": {"text": cut(&lines.join("<br>"), cap * 2)}}],
            }));
        }
        sections.push(json!({
            "widgets": [{"decoratedText": {"topLabel": "Run", "text": google_card_text(&n.describe, cap)}}],
        }));
        json!({
            "text": google_chat_text(&n.plain(), cap),
            "cardsV2": [{
                // Unique per message; Chat only needs it to tell cards of one message apart.
                "cardId": format!("aviary-{}", n.id.replace('/', "-")),
                "card": {
                    "header": {"title": google_card_text(&n.title, 256.min(cap)), "subtitle": format!("severity {}", n.severity.as_str())},
                    "sections": sections,
                },
            }],
        })
    })
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
    let timestamp = unix_millis(&event.time).unwrap_or_else(aviary_runtime::clock::now_ms);
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
    payload.signing = signing.signing.clone();
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
    // RFC 3339 years have four digits; a longer one would overflow the arithmetic below.
    if !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
        || hh > 23
        || mm > 59
        || ss > 60
    {
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
    Payload {
        body: raw_event.to_vec(),
        content_type: "application/cloudevents+json",
        headers: Vec::new(),
        signing: provider.signing.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::tests::rolled_back;

    #[test]
    fn a_time_with_an_impossible_year_is_no_time_not_a_panic() {
        // Found by the audit_event fuzz target: this overflowed the day arithmetic.
        assert_eq!(unix_millis("10999999913-01-01T00:01:00Z"), None);
        assert_eq!(unix_millis("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(
            unix_millis("9999-12-31T23:59:59Z"),
            Some(253_402_300_799_000)
        );
    }
    use crate::notification::{Notification, Severity};
    use crate::settings::Settings;
    use aviary_proto::events::EventKind;
    use aviary_runtime::signature::{SigningKey, Verifier};
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
        let key = SigningKey::new("key", Some("k1")).expect("key");
        let signing = EventWebhooks {
            signing: Some(Signing {
                header: "X-Hook-Signature".into(),
                key: key.clone(),
            }),
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
        assert_eq!(p.signing, signing.signing);
        let normal = event_hook(
            &hook,
            &event,
            EventKind::StepAdvanced,
            &EventWebhooks::default(),
        );
        let v: Value = serde_json::from_slice(&normal.body).expect("json");
        assert_eq!(v["metadata"]["eventType"], "Normal");
        assert!(normal.headers.is_empty());
        assert_eq!(normal.signing, None);
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
        let signing = out.signing.expect("signed");
        assert_eq!(signing.header, "X-Aviary-Signature");
        assert_eq!(signing.key.id(), SigningKey::default_id(b"key"));
        let (_, header) = signing.sign_now(&out.body);
        assert!(Verifier::new([signing.key]).verify(&header, &raw).is_ok());
    }

    const MENTIONS: &str = "<!channel> <!here> <!everyone> <@U123ABC> <#C456DEF|ops> @everyone @here \
        <@123456> <@&789> <#42> <users/all> <users/1234> <at>Bob</at> <AT>Eve</AT> & <https://x|y> ";

    /// An event whose outside text is 10 000 characters of mentions (reason, names, actor,
    /// metric names), as one a hostile caller could provoke.
    fn hostile() -> Notification {
        let mut event = rolled_back();
        let flood: String = MENTIONS.chars().cycle().take(10_000).collect();
        event.data.reason = flood.clone();
        event.data.actor = flood.clone();
        event.data.name = flood.chars().take(300).collect();
        event.data.canary = flood.clone();
        for m in &mut event.data.metrics {
            m.name = flood.clone();
            m.reason = flood.clone();
        }
        Notification::new(&event, EventKind::Halted, Severity::Warn, &flood)
    }

    fn hostile_payload(yaml: &str) -> (Payload, Value) {
        let p = provider(yaml);
        let out = payload(&p, &hostile(), b"{}");
        let v = serde_json::from_slice(&out.body).expect("json body");
        (out, v)
    }

    /// Every string in `v`.
    fn strings(v: &Value) -> Vec<&str> {
        match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().flat_map(strings).collect(),
            Value::Object(o) => o.values().flat_map(strings).collect(),
            _ => Vec::new(),
        }
    }

    fn chars(v: &Value) -> usize {
        v.as_str().map_or(0, |s| s.chars().count())
    }

    fn assert_none_of(v: &Value, needles: &[&str]) {
        for s in strings(v) {
            let lower = s.to_ascii_lowercase();
            for needle in needles {
                assert!(!lower.contains(needle), "{needle:?} survived in {s:?}");
            }
        }
    }

    #[test]
    fn slack_keeps_limits_and_no_mention_under_hostile_text() {
        let (_, v) = hostile_payload("providers: [{name: s, type: slack, url: 'https://x'}]");
        assert!(chars(&v["text"]) <= 3000);
        let blocks = v["blocks"].as_array().expect("blocks");
        assert!(blocks.len() <= 50);
        assert_eq!(blocks[0]["type"], "header");
        assert!(chars(&blocks[0]["text"]["text"]) <= 150);
        for b in blocks {
            assert!(chars(&b["text"]["text"]) <= 3000, "{b}");
            if let Some(fields) = b["fields"].as_array() {
                assert!(fields.len() <= 10);
                assert!(fields.iter().all(|f| chars(&f["text"]) <= 2000));
            }
            for e in b["elements"].as_array().into_iter().flatten() {
                assert!(chars(&e["text"]) <= 3000);
            }
        }
        // Escaped as Slack documents: no `<` or `>` is left for Slack to parse.
        assert_none_of(&v, &["<", ">"]);
        let section = v["blocks"][1]["text"]["text"].as_str().expect("text");
        assert!(section.contains("&lt;!channel&gt;"), "{section}");
    }

    #[test]
    fn discord_keeps_every_embed_limit_and_no_mention_under_hostile_text() {
        let (_, v) = hostile_payload("providers: [{name: d, type: discord, url: 'https://x'}]");
        assert_eq!(v["allowed_mentions"]["parse"], json!([]));
        assert!(chars(&v["content"]) <= 2000);
        let embeds = v["embeds"].as_array().expect("embeds");
        let mut total = 0;
        for e in embeds {
            assert!(chars(&e["title"]) <= 256);
            assert!(chars(&e["description"]) <= 4096);
            assert!(chars(&e["footer"]["text"]) <= 2048);
            let fields = e["fields"].as_array().expect("fields");
            assert!(!fields.is_empty() && fields.len() <= 25);
            for f in fields {
                let (name, value) = (chars(&f["name"]), chars(&f["value"]));
                assert!(
                    (1..=256).contains(&name) && (1..=1024).contains(&value),
                    "{f}"
                );
                total += name + value;
            }
            total += chars(&e["title"]) + chars(&e["description"]) + chars(&e["footer"]["text"]);
            assert!(
                chars(&e["description"]) >= 1000,
                "the description keeps room"
            );
        }
        assert!(total <= 6000, "embed total {total}");
        assert_none_of(&v, &["@everyone", "@here", "<@", "<#"]);
    }

    #[test]
    fn discord_total_holds_with_many_long_fields() {
        let p = provider("providers: [{name: d, type: discord, url: 'https://x'}]");
        let mut n = hostile();
        n.fields = (0..40)
            .map(|i| (format!("{i}{}", "n".repeat(300)), "v".repeat(2000)))
            .collect();
        let v: Value = serde_json::from_slice(&payload(&p, &n, b"{}").body).expect("json");
        let e = &v["embeds"][0];
        let fields = e["fields"].as_array().expect("fields");
        assert!(fields.len() <= 25);
        let total: usize = fields
            .iter()
            .map(|f| chars(&f["name"]) + chars(&f["value"]))
            .sum::<usize>()
            + chars(&e["title"])
            + chars(&e["description"])
            + chars(&e["footer"]["text"]);
        assert!(total <= 6000, "embed total {total}");
    }

    #[test]
    fn teams_cards_fit_28_kb_and_no_mention_under_hostile_text() {
        for kind in ["teams", "teams-legacy"] {
            let yaml = format!("providers: [{{name: t, type: {kind}, url: 'https://x'}}]");
            let p = provider(&yaml);
            let out = payload(&p, &hostile(), b"{}");
            assert!(out.body.len() <= 28_000, "{kind}: {} bytes", out.body.len());
            let v: Value = serde_json::from_slice(&out.body).expect("json");
            assert_none_of(&v, &["<at>", "</at>"]);
        }
    }

    #[test]
    fn google_chat_fits_32_000_bytes_and_no_mention_under_hostile_text() {
        let (out, v) =
            hostile_payload("providers: [{name: g, type: google-chat, url: 'https://x'}]");
        assert!(out.body.len() <= 32_000, "{} bytes", out.body.len());
        assert!(chars(&v["text"]) <= 4096);
        assert_none_of(&v, &["<users/"]);
        let card = v["cardsV2"][0]["card"].to_string();
        assert!(card.len() <= 32_000);
    }

    #[test]
    fn defused_text_stays_readable() {
        assert_eq!(
            discord_text("hi @everyone", 100),
            format!("hi @{ZWSP}everyone")
        );
        assert_eq!(
            google_chat_text("<users/all> ok", 100),
            format!("<{ZWSP}users/all> ok")
        );
        assert_eq!(slack_text("a<b", 10), "a&lt;b");
        assert_eq!(slack_text("ab<cd", 5), "ab…");
        assert_eq!(slack_text("é".repeat(5).as_str(), 3), "éé…");
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 3), "hé…");
    }
}
