//! `millrace`: the broker binary. `millrace serve` runs a single-node Kafka-compatible broker.

mod cli;
mod config;
mod handlers;
mod server;
mod state;
mod topic_config;

use std::sync::Arc;

use clap::{Parser, Subcommand};

/// Serves large allocations from address space so that hostile element counts in requests
/// cannot abort the process (see `millrace_protocol::alloc`).
#[global_allocator]
static ALLOC: millrace_protocol::alloc::GuardedAlloc = millrace_protocol::alloc::GuardedAlloc;

#[derive(Debug, Parser)]
#[command(name = "millrace", version, about = "A Kafka-compatible streaming broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (Kafka protocol on --listen, data in --data-dir).
    Serve(config::ServeArgs),
    /// Create, list, describe, delete topics and alter their configs (on any Kafka broker).
    Topic {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(subcommand)]
        command: cli::TopicCommand,
    },
    /// Produce lines from stdin as records (on any Kafka broker).
    Produce {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(flatten)]
        args: cli::ProduceArgs,
    },
    /// Print records of a partition (on any Kafka broker).
    Consume {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(flatten)]
        args: cli::ConsumeArgs,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic { connect, command } => tool(cli::topic(connect, command)),
        Command::Produce { connect, args } => tool(cli::produce(connect, args)),
        Command::Consume { connect, args } => tool(cli::consume(connect, args)),
    }
}

/// Runs a client tool on a small runtime; errors go to stderr with exit status 1.
fn tool(
    f: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("millrace: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("millrace: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps request-sized buffers (up to 32 MiB) in glibc's heap instead of a fresh `mmap` each:
/// every produce request otherwise paid page faults and page zeroing for its buffers, about 40%
/// of the broker's CPU per GB produced (measured with `perf`, see the benchmark notes). Freed
/// memory is returned to the system once 128 MiB is free at the top of the heap.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn serve(args: config::ServeArgs) -> std::process::ExitCode {
    tune_malloc();
    if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|s| s.trim() == "2") {
        tracing::warn!(
            "vm.overcommit_memory=2: a request with a huge element count could abort the broker"
        );
    }
    let threads = args.network_threads();
    let broker = match state::Broker::open(args) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data directory");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(broker)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}
