//! `pgmon-agent`: dispatches the subcommands of [`pgmon_agent::cli`].
use clap::Parser as _;
use pgmon_agent::cli::{
    Cli, Command, CostCommand, check, check_config, cleanup, doctor, emergency, fingerprint,
    install_sql, record, release_all, replay, run, status, unlock,
};

fn main() -> std::process::ExitCode {
    pgmon_agent::util::tls_provider();
    let cli = Cli::parse();
    if let Command::Check { config } = &cli.command {
        return std::process::ExitCode::from(check::check(config));
    }
    if let Command::Doctor { config } = &cli.command {
        return match doctor::doctor(config) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::FAILURE,
            Err(e) => {
                eprintln!("pgmon-agent doctor: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Command::Cleanup {
        config,
        json,
        dry_run,
        ..
    } = &cli.command
    {
        return cleanup::cleanup(config, *json, *dry_run, cli.log_format);
    }
    let result = match &cli.command {
        Command::Cost {
            command:
                CostCommand::Forget {
                    target,
                    database,
                    agent,
                },
        } => pgmon_agent::cli::cost::forget(agent, target, database.as_deref()),
        Command::Run { config } => run::run(config, cli.log_format),
        Command::Status { agent, json, role } => status::status(agent, *json, role.as_deref()),
        Command::CheckConfig { file } => check_config::check_config(file),
        Command::Fingerprint { sql } => fingerprint::fingerprint(sql),
        Command::Unlock {
            role,
            agent,
            budget,
        } => unlock::unlock(agent, role, *budget),
        Command::Record {
            config,
            out,
            seconds,
        } => record::record(config, out, *seconds),
        Command::Replay { file, passes, cold } => replay::replay(file, *passes, *cold),
        Command::Check { .. } | Command::Doctor { .. } | Command::Cleanup { .. } => {
            unreachable!("handled above")
        }
        Command::InstallSql {
            dsn,
            databases,
            uninstall,
        } => install_sql::install_sql(dsn, databases, *uninstall),
        Command::Emergency { config, yes } => emergency::emergency(config, *yes),
        Command::ReleaseAll { config, yes } => {
            release_all::release_all(config, *yes, cli.log_format)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgmon-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
