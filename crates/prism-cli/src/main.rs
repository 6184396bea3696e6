//! `prism`: command-line client for a Prism search server.

mod client;
mod import;
mod output;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use client::{Client, CollectionsResponse, SearchRequest, SearchResponse};
use import::{Format, ImportOptions, MAX_REPORTED_ERRORS};

#[derive(Parser)]
#[command(
    name = "prism",
    version,
    about = "Command-line client for a Prism search server"
)]
struct Cli {
    /// Base URL of the Prism server
    #[arg(
        long,
        global = true,
        env = "PRISM_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import documents from a JSONL or CSV file into a collection
    Import(ImportArgs),
    /// Search a collection
    Search(SearchArgs),
    /// List collections
    Collections {
        /// Print the raw JSON response
        #[arg(long)]
        json: bool,
    },
    /// Show server health
    Health,
}

#[derive(Args)]
struct ImportArgs {
    /// Collection to import into
    #[arg(short, long)]
    collection: String,

    /// Input file (.jsonl, .ndjson or .csv); `-` reads standard input
    file: PathBuf,

    /// Input format [default: from the file extension]
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Documents per bulk request
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_size: u64,

    /// JSONL key or CSV column that holds the document id
    #[arg(long, default_value = "id")]
    id_field: String,

    /// Exit with status 1 if any document failed to import
    #[arg(long)]
    fail_on_error: bool,

    /// Do not refresh at the end: the documents become searchable at the server's next
    /// scheduled refresh (within `refresh_interval_ms`) instead of before the import returns
    #[arg(long)]
    no_refresh: bool,
}

#[derive(Args)]
struct SearchArgs {
    /// Collection to search
    collection: String,

    /// Query text
    query: String,

    /// Maximum number of results
    #[arg(long, default_value_t = 10)]
    limit: usize,

    /// Number of results to skip
    #[arg(long, default_value_t = 0)]
    offset: usize,

    /// Filter expression, passed to the server as is
    #[arg(long)]
    filter: Option<String>,

    /// Print the raw JSON response
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // Output piped into e.g. `head` that exits early is not a failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let client = Client::new(&cli.url)?;
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Import(args) => return import(&client, args),
        Command::Search(args) => search(&client, args, &mut out)?,
        Command::Collections { json } => {
            let raw = client.collections()?;
            if json {
                output::write_json(&mut out, &raw)?;
            } else {
                let list: CollectionsResponse = serde_json::from_value(raw)
                    .context("unexpected response to GET /collections")?;
                output::write_collections(&mut out, &list.collections)?;
            }
        }
        Command::Health => output::write_json(&mut out, &client.health()?)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn search(client: &Client, args: SearchArgs, out: &mut impl Write) -> Result<()> {
    let request = SearchRequest {
        query: args.query,
        limit: args.limit,
        offset: args.offset,
        filter: args.filter,
    };
    let raw = client.search(&args.collection, &request)?;
    if args.json {
        output::write_json(out, &raw)?;
        return Ok(());
    }
    let response: SearchResponse = serde_json::from_value(raw).with_context(|| {
        format!(
            "unexpected response to POST /collections/{}/search",
            args.collection
        )
    })?;
    output::write_search(out, &response)?;
    Ok(())
}

fn import(client: &Client, args: ImportArgs) -> Result<ExitCode> {
    let options = ImportOptions {
        collection: args.collection,
        path: args.file,
        format: args.format,
        batch_size: usize::try_from(args.batch_size).context("--batch-size is too large")?,
        id_field: args.id_field,
    };
    let report = import::run(client, &options)?;
    // An import that is done is searchable: `prism search` right after it sees every document.
    let searchable = if args.no_refresh || report.imported == 0 {
        "searchable after the server's next refresh"
    } else {
        client.refresh(&options.collection).map_err(|e| {
            anyhow::anyhow!(
                "the documents are imported and durable, but the final refresh failed: {e}"
            )
        })?;
        "searchable now"
    };

    let secs = report.elapsed.as_secs_f64();
    println!(
        "imported {} documents ({} errors) in {secs:.1}s, {} docs/s; {searchable}",
        report.imported,
        report.errors,
        import::per_second(report.imported, report.elapsed)
    );
    for sample in &report.samples {
        eprintln!("  {sample}");
    }
    if report.unlisted > 0 {
        eprintln!(
            "  ... and {} more (only the first {MAX_REPORTED_ERRORS} are listed)",
            report.unlisted
        );
    }

    if args.fail_on_error && report.errors > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
