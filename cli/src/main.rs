//! `flyt`: every Flyt chat action from the shell.
//!
//! Without `--json` the output is for people (aligned, local times); with it, one JSON value
//! per command for scripts. Errors go to stderr as one line and exit with status 1 (usage
//! errors: 2); nothing is changed by a command that fails.

mod control;
mod net;
mod output;
mod ui;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use peer::{Store, relay_client};

/// Flyt: local-first team chat.
#[derive(Debug, Parser)]
#[command(name = "flyt", version, about, max_term_width = 100)]
struct Cli {
    /// Where this node keeps its identity and database.
    /// [default: $FLYT_HOME, else the XDG data dir, e.g. ~/.local/share/flyt]
    #[arg(long, global = true, env = "FLYT_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this home's identity (a new person and device key).
    Init {
        /// Your display name.
        #[arg(long)]
        name: String,
    },
    /// Show this home's identity.
    Whoami,
    /// Create, list and switch workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Create and list channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// List the members of the current workspace.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Add, list and remove the relays the current workspace syncs through.
    #[command(subcommand)]
    Relay(RelayCmd),
    /// Post a message; prints its id.
    Send {
        /// Channel: `general`, `#general` or a channel id.
        channel: String,
        /// Markdown text.
        text: String,
        /// Quote / reply to this message.
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
        /// Reply in the thread of this message.
        #[arg(long, value_name = "ID")]
        thread: Option<String>,
    },
    /// Show the newest messages of a channel, oldest first, and mark it read.
    Read {
        /// Channel: `general`, `#general` or a channel id.
        channel: String,
        /// How many messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only messages older than this one (paging back through history).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
        /// Show this message's thread instead of the channel.
        #[arg(long, value_name = "ID")]
        thread: Option<String>,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// Message id (or a unique prefix).
        id: String,
        /// New Markdown text.
        text: String,
    },
    /// Delete a message for everyone (yours, or anyone's if you are an admin).
    Delete {
        /// Message id (or a unique prefix).
        id: String,
    },
    /// React to a message with an emoji.
    React {
        /// Message id (or a unique prefix).
        id: String,
        /// The emoji, e.g. 👍 or :tada:.
        emoji: String,
        /// Take your reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Run this home's always-on node: sync with peers until Ctrl-C. Other `flyt` commands on
    /// this home keep working meanwhile; the node picks up their writes within 100 ms.
    Serve {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: std::net::SocketAddr,
        /// Announce this node on the local network and find your workspaces' members' nodes
        /// there (mDNS), so peers on one LAN sync directly without anyone's address.
        #[arg(long)]
        lan: bool,
        /// Reach peers and be reached only through your workspaces' relays (`flyt relay
        /// add`): no UDP socket of its own, so no peer learns this device's IP addresses, and
        /// it syncs from behind any NAT or firewall that lets the relay's URL through. A new
        /// home joins through the relay its invite ticket names.
        #[arg(long, conflicts_with = "lan")]
        relay_only: bool,
        /// Also serve the desktop app's UI to a browser on this loopback address (e.g.
        /// 127.0.0.1:8080; port 0 picks one) and print the link to open, token included.
        /// Works on a fresh home: the page onboards you.
        #[arg(long, value_name = "ADDR")]
        ui: Option<std::net::SocketAddr>,
        /// The built UI to serve with --ui [default: app/ui/dist of the checkout flyt was
        /// built from]
        #[arg(long, env = "FLYT_UI_DIR", value_name = "DIR", requires = "ui")]
        ui_dir: Option<PathBuf>,
    },
    /// Print an invite ticket for the current workspace (needs `flyt serve` running).
    Invite {
        /// How long the ticket is valid: e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires: std::time::Duration,
        /// The role the new member gets.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Join a workspace with an invite ticket, and fetch it.
    Join {
        /// The ticket (starts with flyt1).
        ticket: String,
        /// UDP address to use.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: std::net::SocketAddr,
    },
    /// Print messages of a channel as they arrive (Ctrl-C to stop).
    Tail {
        /// Channel: `general`, `#general` or a channel id.
        channel: String,
    },
    /// Show this home's node, peers and documents.
    Status,
    /// Tell the members who can see a channel that you are typing (for about 5 seconds;
    /// needs `flyt serve` running).
    Typing {
        /// Channel: `general`, `#general`, a channel id or a DM (`@bob`).
        channel: String,
    },
    /// Link another device of yours: `device link` here, `device join TICKET` there.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Send a direct message to one person, or a group DM to several (comma-separated).
    /// Read it with `flyt read @bob` (or `@bob,carol`).
    Dm {
        /// Display names or keys, e.g. `bob` or `bob,carol`.
        #[arg(value_delimiter = ',', num_args = 1, required = true)]
        names: Vec<String>,
        /// Markdown text.
        text: String,
    },
    /// Search messages in the current workspace, newest first.
    Search {
        /// Words to find (the last one also matches as a prefix).
        query: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// How many results.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum WorkspaceCmd {
    /// Create a workspace you own; it becomes the current one.
    Create {
        /// Its name.
        name: String,
    },
    /// List your workspaces.
    List,
    /// Make a workspace current.
    Use {
        /// Name or id.
        workspace: String,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCmd {
    /// Create a channel in the current workspace.
    Create {
        /// Name, with or without `#`.
        name: String,
        /// What the channel is about.
        #[arg(long, default_value = "")]
        topic: String,
        /// Only its members will see it (you, and whoever `--members` or `channel add` names).
        #[arg(long)]
        private: bool,
        /// Members of the private channel: display names or keys, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            requires = "private",
            value_name = "NAMES"
        )]
        members: Vec<String>,
    },
    /// List channels and DMs with unread counts.
    List,
    /// Add members to a private channel you are in.
    Add {
        /// The private channel.
        channel: String,
        /// Display names or keys.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove a member from a private channel you are in: their devices get nothing new of it.
    Kick {
        /// The private channel.
        channel: String,
        /// Display name or key.
        name: String,
    },
    /// Who is in a private channel or DM.
    Members {
        /// The channel, or a DM as `@bob`.
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    /// Print a single-use ticket that makes another home a device of yours (needs `flyt
    /// serve` running here).
    Link {
        /// How long the ticket is valid: e.g. 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        expires: std::time::Duration,
    },
    /// On a fresh home (no `flyt init`): become a device of the person whose ticket this is,
    /// and fetch all their workspaces.
    Join {
        /// The ticket (starts with flytdev1).
        ticket: String,
        /// UDP address to use.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: std::net::SocketAddr,
    },
    /// Your devices.
    List,
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// List members and their roles.
    List,
    /// Change a member's role (owners and admins).
    Role {
        /// Display name or key.
        name: String,
        /// admin or member.
        role: String,
    },
    /// Remove a member (owners and admins): their devices get nothing new.
    Remove {
        /// Display name or key.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum RelayCmd {
    /// Add a relay (owners and admins): fetches its /info, records it in the workspace (every
    /// member's node then syncs through it) and hands it the workspace document.
    Add {
        /// The relay's URL, e.g. http://127.0.0.1:8787
        url: String,
    },
    /// List the workspace's relays.
    List,
    /// Remove a relay (owners and admins): members stop syncing with it, it stops serving.
    Remove {
        /// The relay's URL or id.
        url: String,
    },
}

/// Parses `90s`, `30m`, `24h`, `7d`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} is not a duration like 30m, 24h or 7d")),
    };
    if n == 0 {
        return Err("a duration must be more than zero".into());
    }
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

fn default_home() -> Result<PathBuf> {
    peer::home::data_home()
        .context("no data directory for this user; pass --home DIR or set FLYT_HOME")
}

fn open(home: &std::path::Path) -> Result<Store> {
    peer::home::create(home).with_context(|| format!("creating {}", home.display()))?;
    Store::open(&peer::home::db_path(home)).with_context(|| format!("opening {}", home.display()))
}

/// How a command reaches this home's storage: directly (no node runs), or through the running
/// node's control socket, whose store thread then runs each step (see `control`).
pub trait Access {
    /// Runs `f` against the store.
    fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<R> + Send + 'static,
    ) -> Result<R>;
}

impl Access for Store {
    fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        f(self)
    }
}

fn run(cli: Cli, out: &mut output::Out) -> Result<()> {
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    peer::home::create(&home).with_context(|| format!("creating {}", home.display()))?;
    // While `flyt serve` runs, it does every command (it alone writes the database).
    let via_node = !matches!(
        cli.command,
        Command::Serve { .. } | Command::Device(DeviceCmd::Join { .. }) | Command::Tail { .. }
    );
    if via_node && let Some(conn) = control::connect(&home)? {
        tracing::debug!("running the command through the node's control socket");
        return control::run_remote(conn, std::env::args().skip(1).collect(), out);
    }
    let mut store = open(&home)?;
    match cli.command {
        Command::Serve {
            bind,
            lan,
            relay_only,
            ui: Some(ui),
            ui_dir,
        } => {
            drop(store);
            let net = net::Reach {
                bind,
                lan,
                relay_only,
            };
            return net::serve(&home, net, Some((ui, ui::ui_dir(ui_dir))), out);
        }
        Command::Serve {
            bind,
            lan,
            relay_only,
            ..
        } => {
            store.identity()?;
            drop(store);
            let net = net::Reach {
                bind,
                lan,
                relay_only,
            };
            return net::serve(&home, net, None, out);
        }
        Command::Device(DeviceCmd::Join { ticket, bind }) => {
            if let Ok(me) = store.identity() {
                anyhow::bail!(
                    "this home already has an identity ({}): link a fresh home (--home DIR)",
                    me.name
                );
            }
            drop(store);
            return net::device_join(&home, &ticket, bind, out);
        }
        Command::Join { ticket, bind } => {
            store.identity()?;
            drop(store);
            return net::join(&home, &ticket, bind, out);
        }
        Command::Tail { channel } => {
            store.identity()?;
            let ch = store.find_channel(&channel)?;
            return net::tail(store, &home, ch, out);
        }
        Command::Typing { .. } => {
            store.identity()?;
            anyhow::bail!(
                "no node is running for this home: typing goes to peers, so start `flyt serve` first"
            );
        }
        cmd => exec(&mut store, &home, cmd, out)?,
    }
    // Idle-time upkeep after the answer is out: the user never waits for it, and a failure here
    // loses nothing (the next run tries again).
    if let Err(e) = store.maintain() {
        tracing::warn!("storage upkeep failed: {e:#}");
    }
    Ok(())
}

/// Every command that works on storage alone, whoever runs it: this process on its own
/// `Store`, or the running node for a `flyt` process on the control socket.
fn exec<A: Access>(
    a: &mut A,
    home: &std::path::Path,
    cmd: Command,
    out: &mut output::Out,
) -> Result<()> {
    match cmd {
        Command::Init { name } => {
            let me = a.with(move |s| Ok(s.init(&name)?.clone()))?;
            out.identity(&me, home)?;
        }
        Command::Whoami => {
            let me = a.with(|s| Ok(s.identity()?.clone()))?;
            out.identity(&me, home)?;
        }
        Command::Workspace(WorkspaceCmd::Create { name }) => {
            let (name, id) = a.with(move |s| {
                s.identity()?;
                let id = s.create_workspace(&name)?;
                Ok((name, id))
            })?;
            out.created("workspace", &name, &id.to_string())?;
        }
        Command::Workspace(WorkspaceCmd::List) => {
            let rows = a.with(|s| Ok(s.workspaces()?))?;
            out.workspaces(&rows)?;
        }
        Command::Workspace(WorkspaceCmd::Use { workspace }) => {
            let row = a.with(move |s| {
                s.identity()?;
                let id = s.find_workspace(&workspace)?;
                s.use_workspace(id)?;
                s.workspaces()?
                    .into_iter()
                    .find(|w| w.id == id.to_string())
                    .context("workspace vanished")
            })?;
            out.workspaces(std::slice::from_ref(&row))?;
        }
        Command::Channel(ChannelCmd::Create {
            name,
            topic,
            private,
            members,
        }) => {
            let name = name.trim_start_matches('#').to_owned();
            let n = name.clone();
            let id = a.with(move |s| {
                s.identity()?;
                Ok(if private {
                    s.create_private_channel(&n, &topic, &members)?
                } else {
                    s.create_channel(&n, &topic, false)?
                })
            })?;
            out.created("channel", &format!("#{name}"), &id.to_string())?;
        }
        Command::Channel(ChannelCmd::List) => {
            let rows = a.with(|s| {
                s.identity()?;
                Ok(s.channels()?)
            })?;
            out.channels(&rows)?;
        }
        Command::Channel(ChannelCmd::Add { channel, names }) => {
            let rows = a.with(move |s| {
                s.identity()?;
                let ch = s.find_channel(&channel)?;
                s.channel_add(ch, &names)?;
                Ok(s.channel_members(ch)?)
            })?;
            out.members(&rows)?;
        }
        Command::Channel(ChannelCmd::Kick { channel, name }) => {
            let rows = a.with(move |s| {
                s.identity()?;
                let ch = s.find_channel(&channel)?;
                s.channel_kick(ch, &name)?;
                Ok(s.channel_members(ch)?)
            })?;
            out.members(&rows)?;
        }
        Command::Channel(ChannelCmd::Members { channel }) => {
            let rows = a.with(move |s| {
                s.identity()?;
                let ch = s.find_channel(&channel)?;
                Ok(s.channel_members(ch)?)
            })?;
            out.members(&rows)?;
        }
        Command::Device(DeviceCmd::Link { expires }) => {
            let ticket = a.with(move |s| {
                s.identity()?;
                let addrs = s.listen_addrs()?;
                if addrs.is_empty() {
                    anyhow::bail!(
                        "no node is running for this home: start `flyt serve` first, so the ticket says where to reach you"
                    );
                }
                Ok(s.link_ticket(expires.as_millis() as i64, addrs)?)
            })?;
            out.ticket(&ticket)?;
        }
        Command::Device(DeviceCmd::List) => {
            let rows = a.with(|s| {
                s.identity()?;
                Ok(s.devices()?)
            })?;
            out.devices(&rows)?;
        }
        Command::Dm { names, text } => {
            let msg = a.with(move |s| {
                s.identity()?;
                let ch = s.open_dm(&names)?;
                Ok(s.post(ch, &text, None, None)?)
            })?;
            out.sent(&msg)?;
        }
        Command::Member(MemberCmd::List) => {
            let rows = a.with(|s| {
                s.identity()?;
                Ok(s.members()?)
            })?;
            out.members(&rows)?;
        }
        Command::Member(MemberCmd::Role { name, role }) => {
            let role: crdt_model::Role = match role.as_str() {
                "admin" | "member" => role.parse()?,
                _ => anyhow::bail!("a role is admin or member (got {role:?})"),
            };
            let rows = a.with(move |s| {
                s.identity()?;
                s.set_role(&name, role)?;
                Ok(s.members()?)
            })?;
            out.members(&rows)?;
        }
        Command::Member(MemberCmd::Remove { name }) => {
            let rows = a.with(move |s| {
                s.identity()?;
                s.set_role(&name, crdt_model::Role::Removed)?;
                Ok(s.members()?)
            })?;
            out.members(&rows)?;
        }
        Command::Relay(RelayCmd::Add { url }) => {
            a.with(|s| Ok(s.identity().map(|_| ())?))?;
            let url = relay_client::normalize(&url)?;
            let info = relay_client::info(&url)?;
            let u = url.clone();
            let saved = a.with(move |s| {
                let ws = s.add_relay(&u, info.id, info.addrs)?;
                Ok(s.workspace_save(ws)?)
            })?;
            relay_client::join(&url, &saved)?;
            let rows = a.with(|s| Ok(s.relays()?))?;
            out.relays(&rows)?;
        }
        Command::Relay(RelayCmd::List) => {
            let rows = a.with(|s| {
                s.identity()?;
                Ok(s.relays()?)
            })?;
            out.relays(&rows)?;
        }
        Command::Relay(RelayCmd::Remove { url }) => {
            let (removed, saved) = a.with(move |s| {
                s.identity()?;
                let removed = s
                    .relays()?
                    .into_iter()
                    .find(|(id, l)| l.url == url.trim_end_matches('/') || id.to_string() == url);
                let ws = s.remove_relay(&url)?;
                Ok((removed, s.workspace_save(ws)?))
            })?;
            // Members' nodes stop talking to the relay at once, so tell it directly.
            if let Some((_, l)) = removed {
                relay_client::join(&l.url, &saved).with_context(|| {
                    format!("removed here, but {} was not told and still serves the workspace; run this again when it is reachable", l.url)
                })?;
            }
            let rows = a.with(|s| Ok(s.relays()?))?;
            out.relays(&rows)?;
        }
        Command::Invite { expires, role } => {
            let role: crdt_model::Role = match role.as_str() {
                "admin" | "member" => role.parse()?,
                _ => anyhow::bail!("an invite grants admin or member (got {role:?})"),
            };
            let ticket = a.with(move |s| {
                s.identity()?;
                let addrs = s.listen_addrs()?;
                if addrs.is_empty() {
                    anyhow::bail!(
                        "no node is running for this home: start `flyt serve` first, so the ticket says where to reach you"
                    );
                }
                Ok(s.invite(role, expires.as_millis() as i64, addrs)?)
            })?;
            out.ticket(&ticket)?;
        }
        Command::Status => {
            let st = a.with(|s| {
                s.identity()?;
                Ok(s.status()?)
            })?;
            out.status(&st, None)?;
        }
        Command::Send {
            channel,
            text,
            reply_to,
            thread,
        } => {
            let msg = a.with(move |s| {
                s.identity()?;
                let ch = s.find_channel(&channel)?;
                let reply_to = reply_to.map(|r| s.resolve_message(&r)).transpose()?;
                let thread = thread.map(|t| s.resolve_message(&t)).transpose()?;
                Ok(s.post(ch, &text, reply_to, thread)?)
            })?;
            out.sent(&msg)?;
        }
        Command::Read {
            channel,
            limit,
            before,
            thread,
        } => {
            let in_thread = thread.is_some();
            let rows = a.with(move |s| {
                s.identity()?;
                let ch = s.find_channel(&channel)?;
                let rows = s.read(ch, limit, before.as_deref(), thread.as_deref())?;
                if before.is_none() && thread.is_none() {
                    s.mark_read(ch)?;
                }
                Ok(rows)
            })?;
            out.messages(&rows, in_thread)?;
        }
        Command::Edit { id, text } => {
            let msg = a.with(move |s| {
                s.identity()?;
                Ok(s.edit(&id, &text)?)
            })?;
            out.message(&msg)?;
        }
        Command::Delete { id } => {
            let msg = a.with(move |s| {
                s.identity()?;
                Ok(s.delete(&id)?)
            })?;
            out.message(&msg)?;
        }
        Command::React { id, emoji, remove } => {
            let emoji = output::shortcode(&emoji);
            let msg = a.with(move |s| {
                s.identity()?;
                Ok(s.react(&id, &emoji, !remove)?)
            })?;
            out.message(&msg)?;
        }
        Command::Search {
            query,
            channel,
            limit,
        } => {
            let q = query.clone();
            let rows = a.with(move |s| {
                s.identity()?;
                let ch = channel.map(|c| s.find_channel(&c)).transpose()?;
                Ok(s.search(&q, ch, limit)?)
            })?;
            out.search(&rows, &query)?;
        }
        Command::Serve { .. }
        | Command::Join { .. }
        | Command::Tail { .. }
        | Command::Typing { .. }
        | Command::Device(DeviceCmd::Join { .. }) => {
            anyhow::bail!("this command needs the network; it does not run on storage alone")
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(peer::net::QUIET_LOGS)),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut out = output::Out::new(cli.json);
    match run(cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`flyt read general | head`) is not an error.
            // `--json` output fails inside serde_json, whose error hides the io::Error.
            if e.chain().any(|c| {
                let kind = c.downcast_ref::<std::io::Error>().map(|io| io.kind());
                let kind = kind.or_else(|| {
                    c.downcast_ref::<serde_json::Error>()
                        .and_then(serde_json::Error::io_error_kind)
                });
                kind == Some(std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
