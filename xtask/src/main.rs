//! `cargo xtask <command>`: project automation, in Rust, with few dependencies.
//!
//! - `codegen [--check]`: derive `crates/db/src/schema.rs` from the migrations
//!   (both backends must agree); `--check` fails on drift instead of writing.
//! - `migrate [--url URL]`: apply pending migrations to a database
//!   (default: `MODELROUTE_DATABASE__URL`, else the embedded SQLite file).
//! - `check-deps`: enforce the dependency rules of docs/ARCHITECTURE.md.
//! - `ledger verify [--url URL]`: replay the journal and check every ledger
//!   invariant (runs `modelroute ledger verify` against that database).
//! - `retention report|sweep [--dry-run] [--class NAME] [--url URL]`: the
//!   retention schedule of docs/PRIVACY.md (runs `modelroute retention …`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod deps;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use modelroute_db::testing::TestDb;
use modelroute_db::{DatabaseConfig, DatabaseUrl, DbPool, schema_gen};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("codegen") => runtime().and_then(|rt| rt.block_on(codegen(args.iter().any(|a| a == "--check")))),
        Some("migrate") => runtime().and_then(|rt| rt.block_on(migrate(flag_value(&args, "--url")))),
        Some("check-deps") => deps::check(&workspace_root()),
        Some("ledger") if args.get(1).map(String::as_str) == Some("verify") => {
            operator(&["ledger", "verify"], flag_value(&args, "--url"))
        }
        Some("retention") if matches!(args.get(1).map(String::as_str), Some("report" | "sweep")) => {
            let mut passed: Vec<&str> = Vec::new();
            let mut rest = args.iter().map(String::as_str);
            while let Some(a) = rest.next() {
                if a == "--url" {
                    rest.next();
                } else {
                    passed.push(a);
                }
            }
            operator(&passed, flag_value(&args, "--url"))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <codegen [--check] | migrate [--url URL] | check-deps | ledger verify [--url URL] \
                 | retention report|sweep [--dry-run] [--class NAME] [--url URL]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

async fn codegen(check: bool) -> Result<()> {
    let sqlite = TestDb::sqlite().await;
    let postgres = TestDb::postgres().await;
    let a = schema_gen::introspect(sqlite.pool()).await.context("reading the sqlite schema")?;
    let b = schema_gen::introspect(postgres.pool()).await.context("reading the postgres schema")?;
    let diffs = schema_gen::differences(&a, &b);
    if !diffs.is_empty() {
        bail!("migrations/sqlite and migrations/postgres disagree:\n  {}", diffs.join("\n  "));
    }
    let rendered = schema_gen::render(&a);
    let path = workspace_root().join("crates/db/src/schema.rs");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current == rendered {
        println!("codegen: {} is up to date", path.display());
        return Ok(());
    }
    if check {
        bail!("{} is out of date with the migrations: run `cargo xtask codegen`", path.display());
    }
    std::fs::write(&path, rendered)?;
    println!("codegen: wrote {}", path.display());
    Ok(())
}

/// The operator CLI's `command` (`ledger verify`, `retention sweep`, …),
/// built and run from this checkout against `url`, so both tools run the
/// same code.
fn operator(command: &[&str], url: Option<String>) -> Result<()> {
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["run", "--quiet", "-p", "modelroute", "--"]).args(command);
    if let Some(url) = url {
        cmd.env("MODELROUTE_DATABASE__URL", url);
    }
    let shown = command.join(" ");
    let status = cmd.status().with_context(|| format!("running modelroute {shown}"))?;
    if !status.success() {
        bail!("modelroute {shown} failed");
    }
    Ok(())
}

async fn migrate(url: Option<String>) -> Result<()> {
    let url = url
        .or_else(|| std::env::var("MODELROUTE_DATABASE__URL").ok())
        .unwrap_or_else(|| DatabaseConfig::default().url.expose().to_owned());
    let config = DatabaseConfig { url: DatabaseUrl::new(url), ..DatabaseConfig::default() };
    let pool = DbPool::connect(&config).await?;
    let applied = pool.migrate().await?;
    println!("migrate: {} ({} applied: {:?})", config.url.redacted(), applied.len(), applied);
    Ok(())
}
