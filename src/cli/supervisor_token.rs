//! `teledge supervisor-token <id>`: a new bearer token for a supervisor of the status page,
//! and the `[[supervisor]]` lines with its SHA-256 for the configuration. The token is printed
//! once, on standard output, for the installer to hand to the supervisor; the configuration
//! holds only its hash (see `teledge::access`).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct SupervisorTokenArgs {
    /// The supervisor's id as audit records will name it (1..64 of A-Z a-z 0-9 . _ @ -).
    pub id: String,
    /// Print only the token's SHA-256 for a token given on standard input (to check a line).
    #[arg(long)]
    pub hash_stdin: bool,
}

pub fn run(args: SupervisorTokenArgs) -> anyhow::Result<ExitCode> {
    let ok_id = (1..=64).contains(&args.id.len())
        && args
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !ok_id {
        eprintln!(
            "teledge: supervisor id {:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -",
            args.id
        );
        return Ok(ExitCode::from(super::EXIT_CONFIG));
    }
    if args.hash_stdin {
        let mut token = String::new();
        std::io::stdin().read_line(&mut token)?;
        println!("{}", teledge::access::token_hash_hex(token.trim()));
        return Ok(ExitCode::SUCCESS);
    }
    let Some((token, _)) = teledge::access::make_token() else {
        eprintln!("teledge: the system's random source failed: no token made");
        return Ok(ExitCode::FAILURE);
    };
    let hash = teledge::access::token_hash_hex(&token);
    println!(
        "# Token for {} (give it to them; it is not stored anywhere):",
        args.id
    );
    println!("#   {token}");
    println!("# Add to /etc/teledge/teledge.toml:");
    println!("[[supervisor]]");
    println!("id = \"{}\"", args.id);
    println!("token_sha256 = \"{hash}\"");
    println!("view = [\"*\"]");
    println!("listen = []");
    Ok(ExitCode::SUCCESS)
}
