//! `memwarden policy check FILE`: validate a policy and summarise it, without serving.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::policy::Access;

/// `memwarden policy`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PolicyCmd {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// What `memwarden policy` does.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE against the policy schema, compile it, and print a summary (exit 0 or 1).
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Checks or prints a policy.
pub fn run(args: &PolicyCmd) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check { file } = &args.command;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("policy {}: cannot read: {e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let policy = match crate::policy::parse(&text, &file.display().to_string()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    println!("policy {}: ok", file.display());
    println!("sha256: {}", policy.sha256);
    let l = &policy.limits;
    println!(
        "limits: request line {} B, content {} B, metadata {} B, {} tags, query {} chars, page {}",
        l.request_line_bytes,
        l.content_bytes,
        l.metadata_bytes,
        l.tags_max,
        l.query_chars,
        l.page_size_max
    );
    let r = &policy.rates;
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    println!(
        "rates: {} calls/min (burst {}), {} write bytes/min, {} sessions/hour",
        show(r.calls_per_minute.map(u64::from)),
        show(r.burst.map(u64::from)),
        show(r.write_bytes_per_minute),
        show(r.sessions_per_hour.map(u64::from)),
    );
    println!("content rules: {}", policy.rules.len());
    for (name, grant) in &policy.principals {
        let mut tools: Vec<&str> = grant.tools.iter().map(|t| t.as_str()).collect();
        tools.sort();
        let namespaces: Vec<String> = grant
            .namespaces
            .iter()
            .map(|(ns, a)| format!("{ns}:{}", if *a == Access::ReadWrite { "rw" } else { "r" }))
            .collect();
        println!(
            "principal {name}{}: tools [{}], namespaces [{}], default {}",
            grant.uid.map(|u| format!(" (uid {u})")).unwrap_or_default(),
            tools.join(", "),
            namespaces.join(", "),
            grant.default_namespace
        );
    }
    Ok(ExitCode::SUCCESS)
}
