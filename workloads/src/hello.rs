//! hello-app: the lab's application, rewritten from the original Flask app.
//!
//! `/` shows three checks — PostgreSQL, the GitHub API, the Cloudflare API —
//! plus the identity it runs as and who called it; as HTML for people, as
//! JSON for `Accept: application/json`. `/health` answers 200 while the
//! database answers and 503 with the reason when it does not. The app starts
//! and serves without its database and picks it up when it comes back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::db::{Database, DbStatus};
use crate::dial::Dialer;
use crate::external::{ExternalCheck, check, client_tls};

/// Settings of one hello-app.
#[derive(Debug, Clone)]
pub struct HelloConfig {
    /// Where the app listens.
    pub listen: SocketAddr,
    /// The SPIFFE ID the mesh gives this workload (shown on the page).
    pub identity: Option<String>,
    /// The GitHub endpoint checked from the page.
    pub github_url: String,
    /// The Cloudflare endpoint checked from the page.
    pub cloudflare_url: String,
    /// A CA to trust besides the web's (the labs' stand-ins), PEM.
    pub extra_ca_pem: Option<String>,
    /// How long each external check may take.
    pub check_timeout: Duration,
}

impl HelloConfig {
    /// Defaults as the original app, overridable by `HELLO_GITHUB_URL`,
    /// `HELLO_CLOUDFLARE_URL`, `HELLO_EXTRA_CA_FILE`, `HBONE_IDENTITY`.
    pub fn from_env(listen: SocketAddr) -> Self {
        let env = |k: &str| std::env::var(k).ok();
        HelloConfig {
            listen,
            identity: env("HBONE_IDENTITY"),
            github_url: env("HELLO_GITHUB_URL").unwrap_or_else(|| "https://api.github.com/".into()),
            cloudflare_url: env("HELLO_CLOUDFLARE_URL")
                .unwrap_or_else(|| "https://api.cloudflare.com/client/v4/".into()),
            extra_ca_pem: env("HELLO_EXTRA_CA_FILE").and_then(|f| std::fs::read_to_string(f).ok()),
            check_timeout: Duration::from_secs(3),
        }
    }
}

struct AppState {
    config: HelloConfig,
    db: Database,
    dialer: Dialer,
    tls: Arc<rustls::ClientConfig>,
}

/// Everything the page shows, in one structure (the JSON view).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Always `hello-app`.
    pub app: &'static str,
    /// The SPIFFE ID, when the mesh gave one.
    pub identity: Option<String>,
    /// Who called.
    pub caller: Caller,
    /// The database's state.
    pub database: DbStatus,
    /// The external checks.
    pub external: Vec<ExternalCheck>,
}

#[derive(Debug, Clone, Serialize)]
/// Who made the request, as the app sees it.
pub struct Caller {
    /// The TCP peer (a node proxy's address in ambient, the client's otherwise).
    pub remote_addr: String,
    /// The `X-Forwarded-For` header, if any.
    pub forwarded_for: Option<String>,
    /// Set by hbone-lab's gateway: the identity it called as.
    pub via_gateway: Option<String>,
}

/// hello-app's routes: `/` (the page, or JSON for `Accept: application/json`) and `/health`.
pub fn router(config: HelloConfig, db: Database, dialer: Dialer) -> Router {
    let tls = client_tls(config.extra_ca_pem.as_deref());
    let state = Arc::new(AppState {
        config,
        db,
        dialer,
        tls,
    });
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .with_state(state)
}

async fn report(state: &AppState, caller: Caller) -> StatusReport {
    let c = &state.config;
    let (database, github, cloudflare) = tokio::join!(
        state.db.probe(true),
        check(
            "GitHub API",
            &c.github_url,
            &state.dialer,
            state.tls.clone(),
            c.check_timeout
        ),
        check(
            "Cloudflare API",
            &c.cloudflare_url,
            &state.dialer,
            state.tls.clone(),
            c.check_timeout
        ),
    );
    StatusReport {
        app: "hello-app",
        identity: c.identity.clone(),
        caller,
        database,
        external: vec![github, cloudflare],
    }
}

async fn index(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let caller = Caller {
        remote_addr: remote.to_string(),
        forwarded_for: header_text("x-forwarded-for"),
        via_gateway: header_text("x-hbone-lab-gateway-identity"),
    };
    let report = report(&state, caller).await;
    let wants_json = header_text("accept").is_some_and(|a| a.contains("application/json"));
    if wants_json {
        Json(report).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            render_html(&report),
        )
            .into_response()
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let db = state.db.probe(false).await;
    if db.reachable {
        Json(serde_json::json!({"status": "healthy", "database": db.target})).into_response()
    } else {
        let body =
            serde_json::json!({"status": "unhealthy", "reason": db.error, "database": db.target});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn card(title: &str, ok: bool, headline: &str, lines: &[String]) -> String {
    let (class, badge) = if ok {
        ("ok", "connected")
    } else {
        ("bad", "not reachable")
    };
    let items: String = lines
        .iter()
        .map(|l| format!("<li>{}</li>", escape(l)))
        .collect();
    format!(
        "<section class=\"card {class}\"><h2>{}</h2><p class=\"badge\">{badge}</p><p>{}</p><ul>{items}</ul></section>",
        escape(title),
        escape(headline)
    )
}

/// The status page: three cards and the identities involved.
pub fn render_html(r: &StatusReport) -> String {
    let db = &r.database;
    let db_card = if db.reachable {
        card(
            "PostgreSQL",
            true,
            &format!("{} answered", db.target),
            &[
                format!(
                    "server version {}",
                    db.server_version.clone().unwrap_or_default()
                ),
                format!("round trip {:.2} ms", db.round_trip_ms.unwrap_or_default()),
                format!(
                    "{} visits recorded (including this one)",
                    db.visits.unwrap_or_default()
                ),
            ],
        )
    } else {
        card(
            "PostgreSQL",
            false,
            &format!("{} did not answer", db.target),
            &[
                db.error.clone().unwrap_or_default(),
                "The app keeps serving and reconnects when the database is back.".into(),
            ],
        )
    };
    let ext_cards: String = r
        .external
        .iter()
        .map(|c| {
            card(
                &c.name,
                c.result.is_open(),
                &c.url,
                &[c.result.explain(), format!("{} ms", c.elapsed_ms)],
            )
        })
        .collect();
    let caller = &r.caller;
    let who = format!(
        "called from {}{}{}",
        caller.remote_addr,
        caller
            .forwarded_for
            .as_ref()
            .map(|f| format!(", forwarded for {f}"))
            .unwrap_or_default(),
        caller
            .via_gateway
            .as_ref()
            .map(|g| format!(", through the gateway running as {g}"))
            .unwrap_or_default()
    );
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hello-app · hbone-lab</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #1d2433; background: #f6f7fb; }}
h1 {{ margin-bottom: .2rem; }} .sub {{ color: #5b6475; margin-top: 0; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); gap: 1rem; }}
.card {{ background: white; border-radius: .6rem; padding: 1rem 1.2rem; box-shadow: 0 1px 3px #0002; border-top: .35rem solid #999; }}
.card.ok {{ border-top-color: #1f9d55; }} .card.bad {{ border-top-color: #d64545; }}
.badge {{ font-weight: 600; text-transform: uppercase; font-size: .8rem; letter-spacing: .05em; }}
.ok .badge {{ color: #1f9d55; }} .bad .badge {{ color: #d64545; }}
.note {{ background: #fff8e1; border-radius: .6rem; padding: .8rem 1.2rem; margin-top: 1.5rem; }}
code {{ background: #eef0f5; padding: .1rem .3rem; border-radius: .2rem; }}
</style></head>
<body>
<h1>hello-app</h1>
<p class="sub">running as <code>{identity}</code> · {who}</p>
<div class="grid">{db_card}{ext_cards}</div>
<p class="note"><strong>What "blocked" means here:</strong> the connection to the API opened, but its TLS handshake was cut.
In this lab that is Cilium's egress rule with <code>serverNames</code>: it lets hello-app speak TLS to
<code>api.github.com</code> on 443 and cuts any other name. An HTTP error such as 400 or 403 is not a block —
it proves the path is open. Add <code>Accept: application/json</code> for these facts as JSON.</p>
</body></html>
"#,
        identity = escape(r.identity.as_deref().unwrap_or("(no mesh identity given)")),
        who = escape(&who),
    )
}

/// Serves hello-app until `shutdown` resolves (SIGTERM in the CLI).
pub async fn serve(
    config: HelloConfig,
    db: Database,
    dialer: Dialer,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(config, db, dialer);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
