//! What `flyt` prints: aligned text for people, JSON for scripts.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Result;
use crdt_model::Identity;
use peer::{ChannelRow, MemberRow, MessageRow, WorkspaceRow};
use serde::Serialize;
use serde_json::json;

pub struct Out {
    json: bool,
    color: bool,
    out: Box<dyn Write + Send>,
}

/// A writer into a shared buffer: what a command run for another process prints (the control
/// socket sends it back whole).
#[derive(Clone, Default)]
pub struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Buffer {
    /// Everything written so far.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("buffer lock"))
    }
}

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SHORTCODES: &[(&str, &str)] = &[
    (":thumbsup:", "👍"),
    (":+1:", "👍"),
    (":thumbsdown:", "👎"),
    (":-1:", "👎"),
    (":heart:", "❤️"),
    (":tada:", "🎉"),
    (":joy:", "😂"),
    (":smile:", "😄"),
    (":eyes:", "👀"),
    (":fire:", "🔥"),
    (":rocket:", "🚀"),
    (":white_check_mark:", "✅"),
    (":pray:", "🙏"),
    (":100:", "💯"),
];

/// Turns a few common `:shortcode:`s into the emoji; anything else is kept as typed.
pub fn shortcode(s: &str) -> String {
    SHORTCODES
        .iter()
        .find(|(k, _)| *k == s)
        .map_or_else(|| s.to_owned(), |(_, v)| (*v).to_owned())
}

/// `1 message`, `2 messages`.
fn counted(n: i64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

fn local(ts_ms: i64) -> Option<jiff::Zoned> {
    let t = jiff::Timestamp::from_millisecond(ts_ms).ok()?;
    Some(t.to_zoned(jiff::tz::TimeZone::system()))
}

impl Out {
    pub fn new(json: bool) -> Self {
        let stdout = std::io::stdout();
        Out {
            json,
            color: Self::colors(json),
            out: Box::new(stdout),
        }
    }

    /// Whether output to this process's stdout is painted.
    pub fn colors(json: bool) -> bool {
        !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    }

    /// Output into `buf` instead of stdout.
    pub fn to_buffer(json: bool, color: bool, buf: Buffer) -> Self {
        Out {
            json,
            color,
            out: Box::new(buf),
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Writes bytes as they are (what a command run by the node printed).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.out.flush()?;
        Ok(())
    }

    fn json(&mut self, v: &impl Serialize) -> Result<()> {
        serde_json::to_writer_pretty(&mut self.out, v)?;
        writeln!(self.out)?;
        Ok(())
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    pub fn identity(&mut self, me: &Identity, home: &Path) -> Result<()> {
        if self.json {
            return self.json(&json!({
                "name": me.name,
                "key": me.person_id().to_string(),
                "device": me.device_id().to_string(),
                "home": home,
            }));
        }
        writeln!(self.out, "name    {}", me.name)?;
        writeln!(self.out, "key     {}", me.person_id())?;
        writeln!(self.out, "device  {}", me.device_id())?;
        writeln!(self.out, "home    {}", home.display())?;
        Ok(())
    }

    pub fn created(&mut self, kind: &str, name: &str, id: &str) -> Result<()> {
        if self.json {
            return self.json(&json!({ "kind": kind, "name": name, "id": id }));
        }
        writeln!(self.out, "{id}")?;
        Ok(())
    }

    pub fn workspaces(&mut self, rows: &[WorkspaceRow]) -> Result<()> {
        if self.json {
            return self.json(&rows);
        }
        if rows.is_empty() {
            writeln!(self.out, "No workspaces yet: `flyt workspace create NAME`.")?;
        }
        let w = rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0);
        for r in rows {
            let mark = if r.current { "*" } else { " " };
            writeln!(
                self.out,
                "{mark} {:<w$}  {:<7}  {:>3} member{}  {}",
                r.name,
                r.role,
                r.members,
                if r.members == 1 { " " } else { "s" },
                self.paint("2", &r.id)
            )?;
        }
        Ok(())
    }

    pub fn channels(&mut self, rows: &[ChannelRow]) -> Result<()> {
        if self.json {
            return self.json(&rows);
        }
        if rows.is_empty() {
            writeln!(self.out, "No channels yet: `flyt channel create NAME`.")?;
        }
        let w = rows
            .iter()
            .map(|r| r.name.chars().count() + 1)
            .max()
            .unwrap_or(0);
        let unread: Vec<String> = rows
            .iter()
            .map(|r| match (r.unread, r.mentions) {
                (0, _) => String::new(),
                (n, 0) => format!("{n} unread"),
                (n, m) => format!("{n} unread, {m} @you"),
            })
            .collect();
        let uw = unread.iter().map(|u| u.chars().count()).max().unwrap_or(0);
        for (r, u) in rows.iter().zip(&unread) {
            // DM names start with `@` already.
            let mark = match (r.dm, r.private) {
                (true, _) => "",
                (false, true) => "🔒",
                (false, false) => "#",
            };
            let name = format!("{mark}{}", r.name);
            let name = format!("{name:<w$}");
            let name = if r.unread > 0 {
                self.paint("1", &name)
            } else {
                name
            };
            let line = format!("{name}  {u:<uw$}  {}", self.paint("2", &r.topic));
            writeln!(self.out, "{}", line.trim_end())?;
        }
        Ok(())
    }

    pub fn members(&mut self, rows: &[MemberRow]) -> Result<()> {
        if self.json {
            return self.json(&rows);
        }
        let w = rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0);
        for r in rows {
            writeln!(
                self.out,
                "{:<w$}  {:<6}  {}",
                r.name,
                r.role,
                self.paint("2", &r.key)
            )?;
        }
        Ok(())
    }

    pub fn relays(
        &mut self,
        rows: &[(crdt_model::DeviceId, crdt_model::workspace::RelayListing)],
    ) -> Result<()> {
        if self.json {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(id, l)| {
                    serde_json::json!({ "id": id.to_string(), "url": l.url, "addrs": l.addrs, "added_ms": l.at_ms })
                })
                .collect();
            return self.json(&v);
        }
        for (id, l) in rows {
            writeln!(self.out, "{}  {}", l.url, self.paint("2", &id.to_string()))?;
        }
        Ok(())
    }

    pub fn devices(&mut self, rows: &[peer::DeviceRow]) -> Result<()> {
        if self.json {
            return self.json(&rows);
        }
        for r in rows {
            let this = if r.this { "  (this device)" } else { "" };
            writeln!(self.out, "{}{this}", r.device)?;
        }
        Ok(())
    }

    pub fn linked(&mut self, name: &str, workspaces: usize) -> Result<()> {
        if self.json {
            return self.json(&json!({ "name": name, "workspaces": workspaces }));
        }
        writeln!(
            self.out,
            "This home is now a device of {name} ({workspaces} workspaces fetched)."
        )?;
        writeln!(self.out, "Run `flyt serve` to stay in sync.")?;
        Ok(())
    }

    pub fn ticket(&mut self, ticket: &str) -> Result<()> {
        if self.json {
            return self.json(&json!({ "ticket": ticket }));
        }
        writeln!(self.out, "{ticket}")?;
        Ok(())
    }

    pub fn serving(&mut self, at: &peer::net::PeerAddr) -> Result<()> {
        let id = at.id.to_string();
        if self.json {
            let (addrs, relays) = (&at.addrs, &at.relays);
            self.line(&json!({ "type": "serving", "id": id, "addrs": addrs, "relays": relays }))?;
            return Ok(());
        }
        let list: Vec<String> = at.addrs.iter().map(|a| a.to_string()).collect();
        writeln!(self.out, "Flyt node {id}")?;
        match (list.is_empty(), at.relays.is_empty()) {
            (false, _) => writeln!(self.out, "listening on {}", list.join(", "))?,
            (true, false) => writeln!(self.out, "no address of its own: relay only")?,
            (true, true) => writeln!(
                self.out,
                "relay only, and no relay yet: `flyt relay add URL` adds one, or join with a ticket that names one"
            )?,
        }
        if !at.relays.is_empty() {
            writeln!(self.out, "reachable through {}", at.relays.join(", "))?;
        }
        writeln!(
            self.out,
            "Invite someone with `flyt invite` in another terminal. Ctrl-C stops."
        )?;
        self.out.flush()?;
        Ok(())
    }

    /// The link `flyt serve --ui` serves the app at (the token is in the fragment).
    pub fn ui_url(&mut self, url: &str) -> Result<()> {
        if self.json {
            return self.line(&json!({ "type": "ui", "url": url }));
        }
        writeln!(
            self.out,
            "Flyt is open at (this link holds its access token; keep it to yourself):"
        )?;
        writeln!(self.out, "{url}")?;
        writeln!(self.out, "Ctrl-C stops.")?;
        self.out.flush()?;
        Ok(())
    }

    pub fn peer_event(&mut self, what: &str, peer: &str) -> Result<()> {
        if self.json {
            return self.line(&json!({ "type": "peer", "event": what, "device": peer }));
        }
        writeln!(self.out, "peer {} {what}", &peer[..12.min(peer.len())])?;
        self.out.flush()?;
        Ok(())
    }

    pub fn note(&mut self, text: &str) -> Result<()> {
        if !self.json {
            writeln!(self.out, "{text}")?;
            self.out.flush()?;
        }
        Ok(())
    }

    pub fn joined(&mut self, name: &str, id: &str, channels: usize) -> Result<()> {
        if self.json {
            return self.json(&json!({ "workspace": name, "id": id, "channels": channels }));
        }
        writeln!(
            self.out,
            "Joined {name} ({channels} channels). It is now your current workspace."
        )?;
        writeln!(self.out, "Run `flyt serve` to stay in sync.")?;
        Ok(())
    }

    /// `flyt status`: what the database says, and with a running node what it says live.
    pub fn status(
        &mut self,
        st: &peer::Status,
        live: Option<&peer::api::StatusView>,
    ) -> Result<()> {
        if self.json {
            let mut v = serde_json::to_value(st)?;
            if let Some(live) = live {
                v["online"] = json!(live.online);
                v["live"] = serde_json::to_value(live)?;
            }
            return self.json(&v);
        }
        if st.node_running {
            writeln!(
                self.out,
                "node     running, listening on {}",
                st.listen.join(", ")
            )?;
        } else {
            writeln!(self.out, "node     not running (`flyt serve` starts it)")?;
        }
        writeln!(
            self.out,
            "data     {}, {}, {}, {}",
            counted(st.workspaces, "workspace"),
            counted(st.channels, "channel"),
            counted(st.buckets, "bucket"),
            counted(st.messages, "message")
        )?;
        if let Some(live) = live {
            let cu = live.catching_up;
            let state = if cu.done == cu.total {
                "in sync".to_owned()
            } else {
                format!(
                    "catching up ({} of {} documents in sync)",
                    cu.done, cu.total
                )
            };
            let n = live.peers.iter().filter(|p| p.connected).count();
            let peers = if n == 1 { "peer" } else { "peers" };
            writeln!(self.out, "online   {n} {peers} connected, {state}")?;
            for p in live.peers.iter().filter(|p| p.connected) {
                let last = p
                    .last_sync_ts
                    .and_then(local)
                    .map(|t| t.strftime("%H:%M:%S").to_string())
                    .unwrap_or_else(|| "never".into());
                writeln!(
                    self.out,
                    "live     {:<12} {}  {} in sync, {} behind, last sync {last}",
                    p.name.as_deref().unwrap_or("?"),
                    &p.device[..12.min(p.device.len())],
                    p.docs_in_sync,
                    p.docs_behind,
                )?;
            }
        }
        if st.peers.is_empty() {
            writeln!(self.out, "peers    none yet")?;
        }
        for p in &st.peers {
            let last = p
                .last_sync_ms
                .and_then(local)
                .map(|t| format!("  last sync {}", t.strftime("%Y-%m-%d %H:%M")))
                .unwrap_or_default();
            writeln!(
                self.out,
                "peer     {:<12} {}  {} synced{last}  {}",
                p.name.as_deref().unwrap_or("?"),
                &p.device[..12],
                counted(p.synced_documents, "document"),
                self.paint("2", &p.addrs.join(" "))
            )?;
        }
        Ok(())
    }

    /// One line of `tail` output: a JSON object per line, or the rendered message.
    pub fn tail_message(&mut self, kind: &str, m: &MessageRow) -> Result<()> {
        if self.json {
            let mut v = serde_json::to_value(m)?;
            v["type"] = json!(kind);
            return self.line(&v);
        }
        if kind != "message" {
            writeln!(self.out, "{}", self.paint("2", &format!("── {kind}:")))?;
        }
        self.render(m, false)?;
        self.out.flush()?;
        Ok(())
    }

    /// A typing or presence event in `tail`: the JSON object as the node sent it, or a line.
    pub fn ephemeral(&mut self, ev: &serde_json::Value) -> Result<()> {
        if self.json {
            return self.line(ev);
        }
        let name = ev["name"]
            .as_str()
            .or_else(|| ev["person"].as_str().map(|p| &p[..12.min(p.len())]))
            .unwrap_or("someone")
            .to_owned();
        let text = match ev["type"].as_str() {
            Some("typing") => format!("{name} is typing…"),
            _ => format!("{name} is {}", ev["state"].as_str().unwrap_or("?")),
        };
        writeln!(self.out, "{}", self.paint("2", &text))?;
        self.out.flush()?;
        Ok(())
    }

    fn line(&mut self, v: &serde_json::Value) -> Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        writeln!(self.out)?;
        self.out.flush()?;
        Ok(())
    }

    pub fn sent(&mut self, m: &MessageRow) -> Result<()> {
        if self.json {
            return self.json(m);
        }
        writeln!(self.out, "{}", m.id)?;
        Ok(())
    }

    pub fn message(&mut self, m: &MessageRow) -> Result<()> {
        if self.json {
            return self.json(m);
        }
        self.render(m, true)
    }

    pub fn messages(&mut self, rows: &[MessageRow], thread: bool) -> Result<()> {
        if self.json {
            return self.json(&rows);
        }
        if rows.is_empty() {
            writeln!(self.out, "No messages yet.")?;
        }
        let mut day = None;
        for (i, m) in rows.iter().enumerate() {
            let z = local(m.ts);
            let d = z.as_ref().map(|z| z.date());
            if d != day {
                day = d;
                if let Some(z) = &z {
                    let label = format!("── {} ──", z.strftime("%a %-d %b %Y"));
                    writeln!(self.out, "{}", self.paint("2", &label))?;
                }
            }
            self.render(m, false)?;
            if thread && i == 0 && rows.len() > 1 {
                writeln!(self.out, "{}", self.paint("2", "  ── replies ──"))?;
            }
        }
        Ok(())
    }

    pub fn search(&mut self, rows: &[MessageRow], query: &str) -> Result<()> {
        if self.json {
            return self.json(&rows);
        }
        if rows.is_empty() {
            writeln!(self.out, "Nothing found for {query:?}.")?;
        }
        for m in rows {
            self.render(m, true)?;
        }
        Ok(())
    }

    fn render(&mut self, m: &MessageRow, with_channel: bool) -> Result<()> {
        let when = local(m.ts).map_or_else(String::new, |z| {
            if with_channel {
                z.strftime("%Y-%m-%d %H:%M").to_string()
            } else {
                z.strftime("%H:%M").to_string()
            }
        });
        let mut head = format!(
            "{}  {}",
            self.paint("2", &when),
            self.paint("1", &m.author.name)
        );
        if with_channel {
            head.push_str(&format!("  in #{}", m.channel));
        }
        if !m.verified {
            head.push_str(&self.paint("31", "  ⚠ unverified: the signature does not check out"));
        }
        head.push_str(&format!("  {}", self.paint("2", &m.id)));
        writeln!(self.out, "{head}")?;
        let indent = "       ";
        if m.deleted {
            writeln!(
                self.out,
                "{indent}{}",
                self.paint("2;3", "This message was deleted.")
            )?;
        } else {
            if let Some(r) = &m.reply_to {
                writeln!(
                    self.out,
                    "{indent}{}",
                    self.paint("2", &format!("↪ reply to {r}"))
                )?;
            }
            for line in m.text.lines() {
                writeln!(self.out, "{indent}{line}")?;
            }
        }
        let mut meta: Vec<String> = Vec::new();
        if m.edited && !m.deleted {
            meta.push("(edited)".into());
        }
        for (emoji, who) in &m.reactions {
            meta.push(format!("{emoji} {}", who.join(", ")));
        }
        if m.reply_count > 0 {
            let s = if m.reply_count == 1 {
                "reply"
            } else {
                "replies"
            };
            meta.push(format!("💬 {} {s}", m.reply_count));
        }
        if !meta.is_empty() {
            writeln!(self.out, "{indent}{}", self.paint("2", &meta.join("  ·  ")))?;
        }
        Ok(())
    }
}
