//! Temporary stub (replaced by the client CLI).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {}
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// stub
    Stub,
}
pub async fn execute(_args: &ClientArgs, _command: ClientCommand) -> i32 {
    1
}
