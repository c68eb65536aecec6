//! The dependency rules of docs/ARCHITECTURE.md, checked on `cargo metadata`.

// `serde_json::Value` indexing by key returns `Null` for a missing key; it
// cannot panic, so the indexing lint does not apply to this file.
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Which workspace crates each crate may depend on (normal dependencies).
/// Anything not listed here is a violation; change docs/ARCHITECTURE.md and
/// this table together.
const ALLOWED: &[(&str, &[&str])] = &[
    ("modelroute-types", &[]),
    ("modelroute-telemetry", &[]),
    ("modelroute-db", &["modelroute-types"]),
    ("modelroute-identity", &["modelroute-types", "modelroute-db"]),
    ("modelroute-ledger", &["modelroute-types", "modelroute-db"]),
    ("modelroute-jobs", &["modelroute-types", "modelroute-db"]),
    // Sideways on purpose (docs/ARCHITECTURE.md): a verified payment is a ledger credit.
    ("modelroute-billing", &["modelroute-types", "modelroute-db", "modelroute-ledger"]),
    ("modelroute-files", &["modelroute-types", "modelroute-db"]),
    ("modelroute-webhooks", &["modelroute-types", "modelroute-db"]),
    ("modelroute-routing", &["modelroute-types"]),
    // Drives each owning crate's purge through functions the composition root hands it.
    ("modelroute-privacy", &["modelroute-types"]),
    ("modelroute-providers", &["modelroute-types"]),
    // Test-only (a dev-dependency): the provider stand-ins.
    ("modelroute-testkit", &[]),
    // The load harness's upstream and bare proxy: no workspace crate, on purpose.
    ("modelroute-loadkit", &[]),
    (
        "modelroute-executions",
        &["modelroute-types", "modelroute-db", "modelroute-ledger", "modelroute-routing", "modelroute-providers"],
    ),
    // The composition root: wires every domain crate; no HTTP.
    (
        "modelroute-app",
        &[
            "modelroute-types",
            "modelroute-db",
            "modelroute-telemetry",
            "modelroute-identity",
            "modelroute-ledger",
            "modelroute-billing",
            "modelroute-routing",
            "modelroute-providers",
            "modelroute-executions",
            "modelroute-jobs",
            "modelroute-files",
            "modelroute-webhooks",
            "modelroute-privacy",
        ],
    ),
    // The HTTP adapter: over the composition root, naming the domain types
    // it renders (wire formats, error codes). Never the data layer or the
    // job queue directly.
    (
        "modelroute-http",
        &[
            "modelroute-types",
            "modelroute-telemetry",
            "modelroute-app",
            "modelroute-identity",
            "modelroute-ledger",
            "modelroute-billing",
            "modelroute-routing",
            "modelroute-providers",
            "modelroute-executions",
            "modelroute-files",
            "modelroute-webhooks",
        ],
    ),
    // The binary: parses, loads settings, calls the composition root or the
    // HTTP adapter (and the crates whose types its commands name).
    (
        "modelroute",
        &[
            "modelroute-types",
            "modelroute-identity",
            "modelroute-telemetry",
            "modelroute-app",
            "modelroute-http",
            "modelroute-jobs",
            "modelroute-privacy",
        ],
    ),
];

/// External crates a crate must not reach, even transitively.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    ("modelroute-types", &["actix-web", "diesel", "hyper", "tokio"], "types are pure data"),
    ("modelroute-db", &["actix-web", "hyper"], "the data layer knows nothing of HTTP"),
    ("modelroute-identity", &["actix-web"], "identity is a library without actix"),
    ("modelroute-ledger", &["actix-web", "hyper"], "the ledger knows nothing of HTTP"),
    ("modelroute-jobs", &["actix-web", "hyper"], "the job queue knows nothing of HTTP"),
    ("modelroute-billing", &["actix-web"], "billing is a library without actix"),
    ("modelroute-files", &["actix-web"], "the file store knows nothing of the server"),
    ("modelroute-webhooks", &["actix-web"], "webhooks are a library without actix"),
    ("modelroute-privacy", &["actix-web", "diesel", "hyper"], "the retention schedule owns no table and no server"),
    ("modelroute-routing", &["actix-web", "diesel", "hyper", "tokio"], "routing is pure decision logic"),
    ("modelroute-providers", &["actix-web", "diesel"], "adapters know no database and no server"),
    ("modelroute-executions", &["actix-web"], "executions are usable without the server"),
    ("modelroute-telemetry", &["actix-web", "diesel"], "telemetry is a leaf"),
    ("modelroute-app", &["actix-web"], "the platform runs without the HTTP server"),
    ("modelroute-testkit", &["actix-web", "diesel"], "the stand-ins are plain hyper servers"),
];

pub(crate) fn check(root: &Path) -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let meta: Value = serde_json::from_slice(&output.stdout)?;
    let names: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?.to_owned(), p["name"].as_str()?.to_owned())))
        .collect();
    // name -> normal (non-dev, non-build) dependency names
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().into_iter().flatten() {
        let Some(name) = node["id"].as_str().and_then(|id| names.get(id)) else { continue };
        let deps = graph.entry(name.clone()).or_default();
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let (true, Some(dep_name)) = (normal, dep["pkg"].as_str().and_then(|id| names.get(id))) {
                deps.insert(dep_name.clone());
            }
        }
    }
    let mut violations = Vec::new();
    for (krate, allowed) in ALLOWED {
        let Some(deps) = graph.get(*krate) else { continue };
        for dep in deps.iter().filter(|d| d.starts_with("modelroute-")) {
            if !allowed.contains(&dep.as_str()) {
                violations.push(format!("{krate} depends on {dep}, which docs/ARCHITECTURE.md does not allow"));
            }
        }
    }
    for (krate, forbidden, why) in FORBIDDEN {
        let reachable = reachable(&graph, krate);
        for f in *forbidden {
            if reachable.contains(*f) {
                violations.push(format!("{krate} reaches {f}: {why}"));
            }
        }
    }
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(k, _)| *k).collect();
    for krate in graph.keys().filter(|k| k.starts_with("modelroute-")) {
        if !known.contains(krate.as_str()) {
            violations.push(format!("{krate} has no entry in xtask's dependency rules"));
        }
    }
    if violations.is_empty() {
        println!("check-deps: {} crates follow the dependency rules", known.len());
        Ok(())
    } else {
        bail!("dependency rules broken:\n  {}", violations.join("\n  "))
    }
}

fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(n) = stack.pop() {
        for d in graph.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}
