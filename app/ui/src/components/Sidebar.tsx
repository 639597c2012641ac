import type { Channel, Workspace } from "../api";
import { channelTitle, dmOthers } from "../lib/channels";
import { syncLine } from "../lib/status";
import { openChannel, update, useWorkspace, type Dialog, type State } from "../store";
import { Avatar, PresenceDot } from "./Avatar";
import { Icon } from "./MessageItem";

export function WorkspaceRail({ workspaces }: { workspaces: Workspace[] }) {
  return (
    <nav className="rail" aria-label="Workspaces">
      {workspaces.map((w) => (
        <button
          key={w.id}
          className={w.current ? "ws current" : "ws"}
          title={w.name}
          aria-label={`Workspace ${w.name}`}
          aria-current={w.current || undefined}
          onClick={() => !w.current && void useWorkspace(w.id)}
        >
          <span className="ws-icon" style={{ ["--hue" as string]: hue(w.id) }}>
            {w.name.slice(0, 1).toUpperCase()}
          </span>
          {!w.current && w.mentions > 0 && <span className="count alert">{w.mentions}</span>}
          {!w.current && w.mentions === 0 && w.unread > 0 && <span className="unread-dot" />}
        </button>
      ))}
      <button className="ws add" title="Add a workspace" aria-label="Add a workspace" onClick={() => update({ dialog: "workspace" })}>
        <Icon d="M12 5v14M5 12h14" size={18} />
      </button>
    </nav>
  );
}

function hue(id: string): number {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return h % 360;
}

function ChannelRow({ c, current, icon, text }: { c: Channel; current: boolean; icon: React.ReactNode; text: string }) {
  const unread = !current && c.unread > 0;
  return (
    <li>
      <button
        className={`chan${current ? " current" : ""}${unread ? " unread" : ""}`}
        onClick={() => void openChannel(c.id)}
        aria-current={current || undefined}
        data-testid={`channel-${c.name}`}
      >
        <span className="chan-name">
          {icon}
          {text}
        </span>
        {!current && c.mentions > 0 ? (
          <span className="count alert" aria-label={`${c.mentions} mentions`}>{c.mentions}</span>
        ) : unread ? (
          <span className="count" aria-label={`${c.unread} unread`}>{c.unread}</span>
        ) : null}
      </button>
    </li>
  );
}

function SectionHeader({ title, add, dialog }: { title: string; add: string; dialog: Dialog }) {
  return (
    <h2>
      {title}
      <button className="icon-btn small" title={add} aria-label={add} onClick={() => update({ dialog })}>
        <Icon d="M12 5v14M5 12h14" size={14} />
      </button>
    </h2>
  );
}

export function Sidebar({ s }: { s: State }) {
  const ws = s.workspaces.find((w) => w.current);
  const channels = s.channels.filter((c) => !c.dm).sort((a, b) => a.name.localeCompare(b.name));
  const dms = s.channels.filter((c) => c.dm).sort((a, b) => (b.last_ts ?? 0) - (a.last_ts ?? 0));
  const sync = syncLine(s.status, s.stream);
  const me = s.me;
  const byPerson = new Map(s.members.map((m) => [m.person, m]));
  return (
    <aside className="sidebar">
      <header className="ws-header">
        <div>
          <h1>{ws?.name ?? "Flyt"}</h1>
          <div className={`sync ${sync.cls}`} data-testid="sync-status" title={s.status ? `${s.status.peers.length} known peers` : undefined}>
            <span className="sync-dot" /> {sync.text}
          </div>
        </div>
        <button className="icon-btn" title="Invite people" aria-label="Invite people" onClick={() => update({ dialog: "invite" })}>
          <Icon d="M15 19v-1a4 4 0 0 0-4-4H7a4 4 0 0 0-4 4v1M9 10a3 3 0 1 0 0-6 3 3 0 0 0 0 6Zm10-2v6m3-3h-6" />
        </button>
      </header>
      <button className="search-btn" onClick={() => update({ dialog: "search" })} aria-label="Search">
        <Icon d="m20 20-4.5-4.5M11 17a6 6 0 1 0 0-12 6 6 0 0 0 0 12Z" size={14} /> Search
        <kbd>{navigator.platform.includes("Mac") ? "⌘K" : "Ctrl K"}</kbd>
      </button>
      <div className="lists">
        <section>
          <SectionHeader title="Channels" add="Create a channel" dialog="channel" />
          <ul>
            {channels.map((c) => (
              <ChannelRow
                key={c.id}
                c={c}
                current={c.id === s.current}
                icon={<span className="hash">{c.private ? <Icon d="M7 11V8a5 5 0 0 1 10 0v3M6 11h12v9H6z" size={13} /> : "#"}</span>}
                text={c.name}
              />
            ))}
          </ul>
        </section>
        <section>
          <SectionHeader title="Direct messages" add="New direct message" dialog="dm" />
          <ul>
            {dms.map((c) => {
              const others = dmOthers(c, me?.person);
              const one = others.length === 1 ? byPerson.get(others[0]!.person) : undefined;
              return (
                <ChannelRow
                  key={c.id}
                  c={c}
                  current={c.id === s.current}
                  icon={
                    others.length > 1 ? (
                      <span className="group-count" aria-hidden>{others.length}</span>
                    ) : (
                      <PresenceDot state={one ? s.presence[one.person] ?? one.online : undefined} />
                    )
                  }
                  text={channelTitle(c, me?.person)}
                />
              );
            })}
            {dms.length === 0 && <li className="empty-hint">No direct messages yet</li>}
          </ul>
        </section>
      </div>
      <footer className="me-bar">
        {me?.name && <Avatar name={me.name} id={me.person ?? me.name} size={28} presence="online" />}
        <span className="me-name">{me?.name}</span>
        <button className="icon-btn" title="Members" aria-label="Members" onClick={() => update({ dialog: "members" })}>
          <Icon d="M17 20v-1a4 4 0 0 0-4-4H7a4 4 0 0 0-4 4v1M10 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6Zm11 9v-1a4 4 0 0 0-3-3.9M16 5.1a3 3 0 0 1 0 5.8" />
        </button>
        <button className="icon-btn" title="Settings" aria-label="Settings" onClick={() => update({ dialog: "settings" })}>
          <Icon d="M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6Zm7.4-3a7.4 7.4 0 0 0-.1-1.2l2-1.6-2-3.4-2.4 1a7.5 7.5 0 0 0-2-1.2L14.5 3h-5l-.4 2.6a7.5 7.5 0 0 0-2 1.2l-2.4-1-2 3.4 2 1.6a7.4 7.4 0 0 0 0 2.4l-2 1.6 2 3.4 2.4-1a7.5 7.5 0 0 0 2 1.2l.4 2.6h5l.4-2.6a7.5 7.5 0 0 0 2-1.2l2.4 1 2-3.4-2-1.6c.1-.4.1-.8.1-1.2Z" />
        </button>
      </footer>
    </aside>
  );
}
