//! Configuration: built-in defaults → `modelroute.toml` → `MODELROUTE_*`
//! environment variables (`__` separates levels:
//! `MODELROUTE_DATABASE__URL=postgres://…`). One typed section per crate;
//! unknown keys are rejected with an error that names them.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use modelroute_db::DatabaseConfig;
use modelroute_identity::IdentityConfig;
use modelroute_ledger::LedgerConfig;
use modelroute_providers::{ProvidersConfig, default_providers};
use modelroute_routing::{CatalogueConfig, RoutingConfig};
use modelroute_telemetry::TelemetryConfig;
use modelroute_types::{Money, Secret};
use serde::{Deserialize, Serialize};

/// Every setting of the server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[server]`: listening and limits.
    pub server: ServerConfig,
    /// `[database]`: the data layer.
    pub database: DatabaseConfig,
    /// `[identity]`: the server secret.
    pub identity: IdentityConfig,
    /// `[ledger]`: holds and currency.
    pub ledger: LedgerConfig,
    /// `[billing]`: Stripe top-ups, auto top-up, alerts.
    pub billing: modelroute_billing::BillingConfig,
    /// `[catalogue]`: models and routes.
    pub catalogue: CatalogueConfig,
    /// `[routing]`: circuit breakers.
    pub routing: RoutingConfig,
    /// `[providers.NAME]`: provider adapters.
    pub providers: ProvidersConfig,
    /// `[telemetry]`: logs and metrics.
    pub telemetry: TelemetryConfig,
    /// `[bootstrap]`: what an empty database gets on first start.
    pub bootstrap: BootstrapConfig,
    /// `[jobs]`: the durable job queue's workers.
    pub jobs: modelroute_jobs::JobsConfig,
    /// `[files]`: the file store, limits, time-to-live.
    pub files: modelroute_files::FilesConfig,
    /// `[webhooks]`: deliveries, retries, where endpoints may point.
    pub webhooks: modelroute_webhooks::WebhooksConfig,
    /// `[executions]`: asynchronous executions' deadlines, waits, callbacks.
    pub executions: modelroute_executions::ExecutionsConfig,
    /// `[privacy]`: how long each data class is kept.
    pub privacy: modelroute_privacy::PrivacyConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            identity: IdentityConfig::default(),
            ledger: LedgerConfig::default(),
            billing: modelroute_billing::BillingConfig::default(),
            catalogue: CatalogueConfig::default(),
            routing: RoutingConfig::default(),
            providers: default_providers(),
            telemetry: TelemetryConfig::default(),
            bootstrap: BootstrapConfig::default(),
            jobs: modelroute_jobs::JobsConfig::default(),
            files: modelroute_files::FilesConfig::default(),
            webhooks: modelroute_webhooks::WebhooksConfig::default(),
            executions: modelroute_executions::ExecutionsConfig::default(),
            privacy: modelroute_privacy::PrivacyConfig::default(),
        }
    }
}

/// The `[server]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: String,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest accepted request body of a JSON endpoint: a larger
    /// `Content-Length` is a 413 before a byte is read.
    pub max_body_bytes: usize,
    /// A request body may take this long before `body_min_bytes_per_sec`
    /// applies.
    pub body_grace_ms: u64,
    /// After the grace period a body must have arrived at this average rate
    /// (bytes per second), or the request is a 408 and its connection is
    /// closed: a client trickling bytes cannot hold a connection. 0: no minimum.
    pub body_min_bytes_per_sec: u64,
    /// Request bodies being received at once, at most; beyond it a request
    /// is a 503 at once and its connection is closed.
    pub max_pending_bodies: usize,
    /// When set, `/readyz` and `/metrics` answer only requests that carry it
    /// as `Authorization: Bearer …` (set it in production, or keep those
    /// paths off the public load balancer). `/healthz` stays open.
    pub operator_token: Option<Secret>,
    /// Open client connections, at most, over all workers (past it new
    /// connections wait in the listen backlog). 0: from the process's
    /// descriptor limit — half of it less 256, leaving a descriptor for each
    /// connection's upstream call and for the database.
    pub max_connections: usize,
    /// A client must send its complete request head within this time, or
    /// the connection is closed (a client that sends half a header is cut off).
    pub client_request_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this time.
    pub keep_alive_secs: u64,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            max_body_bytes: 4 * 1024 * 1024,
            body_grace_ms: 10_000,
            body_min_bytes_per_sec: 16 * 1024,
            max_pending_bodies: 1024,
            max_connections: 0,
            operator_token: None,
            client_request_timeout_ms: 5_000,
            keep_alive_secs: 30,
            shutdown_timeout_secs: 30,
        }
    }
}

/// The `[bootstrap]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// On start with an empty database, create an org, a project and an API
    /// key, grant `starting_credit`, and print the key once.
    pub enabled: bool,
    /// The default org's name.
    pub org_name: String,
    /// The starting balance, in dollars.
    #[serde(with = "modelroute_types::usd_string")]
    pub starting_credit: Money,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self { enabled: true, org_name: "Default".into(), starting_credit: Money::from_usd(10) }
    }
}

/// Invalid configuration; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct SettingsError(String);

impl Settings {
    /// Loads defaults, then `path` (or `modelroute.toml` when it exists),
    /// then `MODELROUTE_*` environment variables.
    ///
    /// # Errors
    /// A missing explicit file, a malformed value, or an unknown key.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let mut figment = Figment::new();
        // The embedded default: no configuration file at all.
        let embedded = path.is_none() && !Path::new("modelroute.toml").exists();
        match path {
            Some(p) if !p.exists() => {
                return Err(SettingsError(format!("config file {} does not exist", p.display())));
            }
            Some(p) => figment = figment.merge(Toml::file(p)),
            None => figment = figment.merge(Toml::file("modelroute.toml")),
        }
        // Only keys with a section (`MODELROUTE_SECTION__KEY`) are settings;
        // this leaves variables such as MODELROUTE_CONFIG alone.
        figment = figment.merge(Env::prefixed("MODELROUTE_").split("__").filter(|k| k.as_str().contains('.')));
        let mut settings: Self = figment.extract().map_err(|e| SettingsError(e.to_string()))?;
        // Loopback webhook receivers (over http too) are allowed on the
        // embedded default only, unless configured either way.
        if settings.webhooks.allow_loopback.is_none() {
            settings.webhooks.allow_loopback = Some(embedded);
        }
        Ok(settings)
    }

    /// The effective settings as TOML, secrets redacted.
    ///
    /// # Errors
    /// Never in practice (every setting is representable).
    pub fn to_redacted_toml(&self) -> Result<String, SettingsError> {
        toml_string(self)
    }
}

fn toml_string(settings: &Settings) -> Result<String, SettingsError> {
    let value = serde_json::to_value(settings).map_err(|e| SettingsError(e.to_string()))?;
    let mut out = String::new();
    write_toml(&mut out, &[], &value);
    Ok(out)
}

/// A small TOML writer for the `config` command (tables, arrays of tables,
/// scalars), so the server does not need a TOML serializer.
fn write_toml(out: &mut String, path: &[String], value: &serde_json::Value) {
    use std::fmt::Write as _;
    let Some(map) = value.as_object() else { return };
    let is_table = |v: &serde_json::Value| v.is_object();
    let is_table_array = |v: &serde_json::Value| {
        v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(serde_json::Value::is_object))
    };
    for (k, v) in map.iter().filter(|(_, v)| !is_table(v) && !is_table_array(v) && !v.is_null()) {
        let _ = writeln!(out, "{} = {}", key(k), scalar(v));
    }
    for (k, v) in map.iter().filter(|(_, v)| is_table(v)) {
        let mut p = path.to_vec();
        p.push(key(k));
        let _ = writeln!(out, "\n[{}]", p.join("."));
        write_toml(out, &p, v);
    }
    for (k, v) in map.iter().filter(|(_, v)| is_table_array(v)) {
        let mut p = path.to_vec();
        p.push(key(k));
        for item in v.as_array().into_iter().flatten() {
            let _ = writeln!(out, "\n[[{}]]", p.join("."));
            write_toml(out, &p, item);
        }
    }
}

fn key(k: &str) -> String {
    if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') { k.to_owned() } else { format!("{k:?}") }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => format!("[{}]", items.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

#[cfg(test)]
// `Jail::expect_with` closures return `figment::Error`, which is large; the
// signature is figment's, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    // Every test runs in a figment `Jail`: its own working directory and
    // environment, serialised with the other jails (env is process-global).

    #[test]
    fn unknown_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[server]\nbind = \"127.0.0.1:0\"\nbindd = 1\n")?;
            let err = Settings::load(Some(Path::new("a.toml"))).unwrap_err().to_string();
            assert!(err.contains("bindd"), "{err}");
            jail.create_file("modelroute.toml", "[databse]\nurl = \"x\"\n")?;
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("databse"), "{err}");
            assert!(Settings::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_with_typed_values() {
        figment::Jail::expect_with(|jail| {
            // figment reads `25` from the environment as an integer.
            jail.set_env("MODELROUTE_BOOTSTRAP__STARTING_CREDIT", "25");
            jail.set_env("MODELROUTE_SERVER__BIND", "127.0.0.1:9999");
            jail.set_env("MODELROUTE_CONFIG", "not a setting, ignored");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.bootstrap.starting_credit, Money::from_usd(25));
            assert_eq!(s.server.bind, "127.0.0.1:9999");
            jail.set_env("MODELROUTE_SERVER__NOPE", "1");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn printed_config_redacts_secrets_and_round_trips() {
        figment::Jail::expect_with(|jail| {
            let mut s = Settings::default();
            s.identity.server_secret = Secret::new("x".repeat(40));
            s.database.url = modelroute_db::DatabaseUrl::new("postgres://u:pw@h/db");
            let text = s.to_redacted_toml().map_err(|e| e.to_string())?;
            assert!(!text.contains("xxxx") && !text.contains(":pw@"), "{text}");
            assert!(text.contains("[[catalogue.models.routes]]"), "{text}");
            let printed = Settings::default().to_redacted_toml().map_err(|e| e.to_string())?;
            jail.create_file("printed.toml", &printed)?;
            let back = Settings::load(Some(Path::new("printed.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(back.catalogue.models.len(), 2);
            assert!(back.identity.server_secret.is_empty(), "an unset secret prints as unset");
            Ok(())
        });
    }
}
