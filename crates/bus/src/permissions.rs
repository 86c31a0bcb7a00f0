//! Who may publish and subscribe to what: one NATS identity per service, defined here once.
//!
//! [`identities`] lists each service's user with exactly the subjects it needs, built from the
//! names in [`crate::names`]. From it come the nats-server `authorization` block
//! ([`nats_authorization`], what `deploy/nats/permissions.conf` holds) and the table in
//! `docs/bus.md` ([`markdown_table`]); tests check that both are up to date and run the services
//! under these permissions.
//!
//! Replies: every connection uses its own inbox prefix ([`names::inbox_prefix`]) and may
//! subscribe only there, so no service reads another's replies; a responder answers through
//! `allow_responses` (it may publish once to the reply subject of a request it received),
//! never through a grant on other services' inboxes.

use std::fmt::Write as _;

use crate::names;

/// One NATS user and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The NATS user name (`--nats-user`).
    pub user: &'static str,
    /// What runs as this user.
    pub role: &'static str,
    /// The connection's inbox prefix (`--nats-inbox-prefix`; the service's default).
    pub inbox_prefix: String,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (its own inbox included).
    pub subscribe: Vec<String>,
    /// Whether it answers requests (`allow_responses`: one reply per request received).
    pub responds: bool,
}

/// The JetStream API subjects that open and read a KV bucket: stream info, direct and
/// leader gets.
fn kv_read(bucket: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.KV_{bucket}"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}.>"),
        format!("$JS.API.STREAM.MSG.GET.KV_{bucket}"),
    ]
}

/// Writes to a KV bucket (put, create, update and delete are publishes to `$KV.<bucket>.<key>`
/// with a JetStream acknowledgement).
fn kv_write(bucket: &str) -> Vec<String> {
    vec![format!("$KV.{bucket}.>")]
}

/// Listing the keys of, or watching, a KV bucket: an ordered consumer, its flow control.
fn kv_watch(bucket: &str) -> Vec<String> {
    stream_ordered_read(&format!("KV_{bucket}"))
}

/// Reading a stream with ordered (ephemeral) consumers, as `aviary events` and the control
/// API's history do.
fn stream_ordered_read(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// What [`crate::setup::ensure_all_with`] needs: look up and create each stream and bucket.
fn setup() -> Vec<String> {
    let mut streams = vec![
        names::STREAM_EVENTS.to_owned(),
        names::STREAM_DEAD.to_owned(),
    ];
    streams.extend(names::BUCKETS.iter().map(|b| format!("KV_{b}")));
    let mut subjects = vec!["$JS.API.INFO".to_owned()];
    for stream in streams {
        subjects.push(format!("$JS.API.STREAM.INFO.{stream}"));
        subjects.push(format!("$JS.API.STREAM.CREATE.{stream}"));
    }
    subjects
}

/// Route commands to any member cluster's ingresses (`aviary.cluster.<c>.route.<ingress>`):
/// the scheduler sends them, a router agent started with `--cluster` takes its own.
fn cluster_routes() -> String {
    format!("{}.*.route.*", names::CLUSTER_PREFIX)
}

/// Analysis requests to any member cluster's analyzers (`aviary.cluster.<c>.analysis.request`).
fn cluster_analysis() -> String {
    format!("{}.*.analysis.request", names::CLUSTER_PREFIX)
}

/// `subjects` (JetStream API calls `$JS.API.…` and KV writes `$KV.…`) as a client sends them
/// to any member cluster's JetStream domain over the leaf links: `$JS.<cluster>.API.…`, a KV
/// write as `$JS.<cluster>.API.$KV.…` (how a client bound to a domain publishes puts).
fn in_member_domains(subjects: Vec<String>) -> Vec<String> {
    subjects
        .into_iter()
        .map(|s| match s.strip_prefix("$JS.API.") {
            Some(api) => format!("$JS.*.API.{api}"),
            None => format!("$JS.*.API.{s}"),
        })
        .collect()
}

/// Every identity, in the order of the docs table.
pub fn identities() -> Vec<Identity> {
    let inbox = |service: &str| names::inbox_prefix(service);
    let own_inbox = |prefix: &str| format!("{prefix}.>");
    let mut all = Vec::new();

    let prefix = inbox("aviary-scheduler");
    let mut publish = vec![
        format!("{}.*", names::ROUTE_PREFIX),
        cluster_routes(),
        names::WORKLOAD_ALL.to_owned(),
        names::ANALYSIS_REQUEST.to_owned(),
        cluster_analysis(),
        names::WAKE_ALL.to_owned(),
        names::EVENTS_SUBJECTS.to_owned(),
        format!("$JS.API.STREAM.MSG.GET.{}", names::STREAM_EVENTS),
    ];
    publish.extend(stream_ordered_read(names::STREAM_EVENTS));
    for bucket in [
        names::BUCKET_ROLLOUTS,
        names::BUCKET_ROUTES,
        names::BUCKET_LEASES,
    ] {
        publish.extend(kv_write(bucket));
        publish.extend(kv_read(bucket));
        publish.extend(kv_watch(bucket));
    }
    publish.extend(kv_read(names::BUCKET_AGENTS));
    publish.extend(kv_watch(names::BUCKET_AGENTS));
    publish.extend(setup());
    // Member clusters: each desired route is written to the routes bucket in that cluster's
    // JetStream domain, and Apply reads that cluster's published agent capabilities.
    let mut member = kv_write(names::BUCKET_ROUTES);
    member.extend(kv_read(names::BUCKET_ROUTES));
    member.extend(kv_read(names::BUCKET_AGENTS));
    publish.extend(in_member_domains(member));
    all.push(Identity {
        user: "scheduler",
        role: "aviary-scheduler",
        subscribe: vec![names::WAKE_ALL.to_owned(), own_inbox(&prefix)],
        inbox_prefix: prefix,
        publish,
        responds: false,
    });

    let prefix = inbox("aviary-analyzer");
    all.push(Identity {
        user: "analyzer",
        role: "aviary-analyzer",
        publish: Vec::new(),
        subscribe: vec![
            names::ANALYSIS_REQUEST.to_owned(),
            cluster_analysis(),
            own_inbox(&prefix),
        ],
        inbox_prefix: prefix,
        responds: true,
    });

    let prefix = inbox("aviary-gate");
    let mut publish = kv_write(names::BUCKET_GATES);
    publish.extend(kv_read(names::BUCKET_GATES));
    publish.extend(setup());
    all.push(Identity {
        user: "gate",
        role: "aviary-gate",
        publish,
        subscribe: vec![own_inbox(&prefix)],
        inbox_prefix: prefix,
        responds: false,
    });

    let prefix = inbox("aviary-router-agent");
    let mut publish = kv_write(names::BUCKET_AGENTS);
    publish.extend(kv_read(names::BUCKET_AGENTS));
    publish.extend(kv_read(names::BUCKET_ROUTES));
    publish.extend(kv_watch(names::BUCKET_ROUTES));
    publish.extend(setup());
    all.push(Identity {
        user: "router-agent",
        role: "aviary-router-agent",
        publish,
        subscribe: vec![
            format!("{}.*", names::ROUTE_PREFIX),
            cluster_routes(),
            own_inbox(&prefix),
        ],
        inbox_prefix: prefix,
        responds: true,
    });

    let prefix = inbox("aviary-notifier");
    let (events, consumer) = (names::STREAM_EVENTS, names::CONSUMER_NOTIFIER);
    let mut publish = vec![
        names::DEAD_SUBJECTS.to_owned(),
        format!("$JS.API.STREAM.INFO.{events}"),
        format!("$JS.API.CONSUMER.CREATE.{events}.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{events}.{consumer}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{events}.{consumer}"),
        format!("$JS.API.CONSUMER.INFO.{events}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{events}.{consumer}"),
        format!("$JS.ACK.{events}.{consumer}.>"),
        format!("$JS.API.STREAM.CREATE.KV_{}", names::BUCKET_NOTIFIED),
    ];
    publish.extend(kv_write(names::BUCKET_NOTIFIED));
    publish.extend(kv_read(names::BUCKET_NOTIFIED));
    publish.extend(setup());
    all.push(Identity {
        user: "notifier",
        role: "aviary-notifier",
        publish,
        subscribe: vec![own_inbox(&prefix)],
        inbox_prefix: prefix,
        responds: false,
    });

    let prefix = inbox("aviary-controller");
    all.push(Identity {
        user: "controller",
        role: "aviary-controller",
        publish: Vec::new(),
        subscribe: vec![
            names::WORKLOAD_ALL.to_owned(),
            names::EVENTS_SUBJECTS.to_owned(),
            own_inbox(&prefix),
        ],
        inbox_prefix: prefix,
        responds: true,
    });

    let prefix = inbox("aviary-cli");
    all.push(Identity {
        user: "cli-read",
        role: "aviary CLI, read-only (`aviary events`)",
        publish: stream_ordered_read(names::STREAM_EVENTS),
        subscribe: vec![own_inbox(&prefix)],
        inbox_prefix: prefix,
        responds: false,
    });

    let prefix = inbox("aviary-cli-operator");
    let mut publish = stream_ordered_read(names::STREAM_EVENTS);
    publish.extend(stream_ordered_read(names::STREAM_DEAD));
    all.push(Identity {
        user: "cli-operator",
        role: "aviary CLI, operator (`--nats-inbox-prefix _INBOX_aviary-cli-operator`): also reads dead letters",
        publish,
        subscribe: vec![own_inbox(&prefix)],
        inbox_prefix: prefix,
        responds: false,
    });
    for identity in &mut all {
        dedup(&mut identity.publish);
        dedup(&mut identity.subscribe);
    }
    all
}

/// Drops repeats, keeping the first of each: the lists are built from overlapping parts.
fn dedup(subjects: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    subjects.retain(|s| seen.insert(s.clone()));
}

/// The identity named `user`.
pub fn identity(user: &str) -> Option<Identity> {
    identities().into_iter().find(|i| i.user == user)
}

/// The nats-server `authorization { users = [...] }` block for every identity;
/// `password(user)` gives the value written after `password:` (a quoted string, or a
/// `$VARIABLE` the server reads from its environment).
pub fn nats_authorization(password: impl Fn(&str) -> String) -> String {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for identity in identities() {
        let _ = writeln!(out, "    # {}", identity.role);
        let _ = writeln!(out, "    {{");
        let _ = writeln!(out, "      user: \"{}\"", identity.user);
        let _ = writeln!(out, "      password: {}", password(identity.user));
        let _ = writeln!(out, "      permissions: {{");
        if identity.publish.is_empty() && !identity.responds {
            // An empty allow list alone would allow everything.
            let _ = writeln!(out, "        publish: {{ deny: [\">\"] }}");
        } else {
            // With allow_responses, an empty allow list allows only the replies.
            let _ = writeln!(
                out,
                "        publish: {{ allow: [{}] }}",
                list(&identity.publish)
            );
        }
        let _ = writeln!(
            out,
            "        subscribe: {{ allow: [{}] }}",
            list(&identity.subscribe)
        );
        if identity.responds {
            let _ = writeln!(out, "        allow_responses: true");
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(out, "    }}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// The environment variable `deploy/nats/permissions.conf` reads `user`'s password from:
/// `AVIARY_NATS_PASSWORD_<USER>` (upper case, `-` as `_`).
pub fn password_variable(user: &str) -> String {
    format!(
        "AVIARY_NATS_PASSWORD_{}",
        user.to_ascii_uppercase().replace('-', "_")
    )
}

/// The shipped configuration: [`nats_authorization`] with every password from the server's
/// environment ([`password_variable`]).
pub fn shipped_config() -> String {
    format!(
        "# Generated from crates/bus/src/permissions.rs (aviary_bus::permissions); do not edit.\n\
         # Regenerate: AVIARY_REGENERATE=1 cargo test -p aviary-bus --test permissions\n\
         # Include it from nats-server.conf; each password comes from the server's environment.\n\
         {}",
        nats_authorization(|user| format!("${}", password_variable(user)))
    )
}

/// The permissions table of `docs/bus.md`.
pub fn markdown_table() -> String {
    let code = |subjects: &[String]| {
        if subjects.is_empty() {
            "—".to_owned()
        } else {
            subjects
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::from(
        "| user | runs | inbox prefix | publish allow | subscribe allow | replies |\n\
         |---|---|---|---|---|---|\n",
    );
    for i in identities() {
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | {} | {} | {} |",
            i.user,
            i.role,
            i.inbox_prefix,
            code(&i.publish),
            code(&i.subscribe),
            if i.responds {
                "`allow_responses`"
            } else {
                "—"
            }
        );
    }
    out
}
