import type { Channel } from "../api";
import { canManage, channelTitle, dmOthers } from "../lib/channels";
import { closeThread, update, type State } from "../store";
import { Avatar } from "./Avatar";
import { Composer } from "./Composer";
import { Icon, MessageItem } from "./MessageItem";
import { MessageList } from "./MessageList";

function TypingLine({ s, channel }: { s: State; channel: string }) {
  const names = Object.values(s.typing[channel] ?? {}).map((t) => t.name);
  const text =
    names.length === 0
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length === 2
          ? `${names[0]} and ${names[1]} are typing…`
          : "Several people are typing…";
  return (
    <div className="typing" aria-live="polite" data-testid="typing">
      {text && (
        <>
          <span className="typing-dots"><i /><i /><i /></span> {text}
        </>
      )}
    </div>
  );
}

export function ChannelView({ s, channel }: { s: State; channel: Channel }) {
  const data = s.byChannel[channel.id];
  const me = s.me?.person ?? "";
  const canModerate = canManage(s.members.find((m) => m.person === me)?.role);
  const name = channelTitle(channel, me);
  const others = channel.dm ? dmOthers(channel, me) : [];
  const header = (
    <div className="channel-start">
      {channel.dm && others.length ? (
        <div className="dm-faces">
          {others.slice(0, 3).map((m) => (
            <Avatar key={m.person} name={m.name} id={m.person} size={56} presence={s.presence[m.person] ?? s.members.find((x) => x.person === m.person)?.online} />
          ))}
        </div>
      ) : (
        <div className="big-hash">{channel.dm ? "@" : "#"}</div>
      )}
      <h2>{channel.dm ? name : `Welcome to #${name}`}</h2>
      <p className="muted">
        {channel.dm
          ? `This is the beginning of your conversation with ${name}.`
          : `This is the very beginning of #${name}.${channel.topic ? ` ${channel.topic}` : ""}`}
      </p>
    </div>
  );
  return (
    <main className="channel" aria-label={`Channel ${name}`}>
      <header className="channel-header">
        <div className="title">
          <h2>
            <span className="hash">{channel.dm ? "@" : channel.private ? "🔒" : "#"}</span>
            {name}
          </h2>
          {channel.topic && <span className="topic">{channel.topic}</span>}
        </div>
        <div className="header-actions">
          <button className="pill" onClick={() => update({ dialog: "members" })} title="Members" aria-label="Members">
            <Icon d="M17 20v-1a4 4 0 0 0-4-4H7a4 4 0 0 0-4 4v1M10 11a3 3 0 1 0 0-6 3 3 0 0 0 0 6Z" size={14} />
            {channel.members.length || s.members.filter((m) => m.role !== "removed").length}
          </button>
          <button className="icon-btn" onClick={() => update({ dialog: "search" })} title="Search (Ctrl+K)" aria-label="Search messages">
            <Icon d="m20 20-4.5-4.5M11 17a6 6 0 1 0 0-12 6 6 0 0 0 0 12Z" />
          </button>
        </div>
      </header>
      {data && (data.items.length > 0 || !data.loading) ? (
        <MessageList
          key={channel.id}
          channel={channel.id}
          items={data.items}
          hasMore={data.hasMore}
          loading={data.loading}
          me={me}
          myName={s.me?.name ?? ""}
          canModerate={canModerate}
          editing={s.editing}
          focus={s.focus}
          presence={s.presence}
          threads={s.threads}
          header={header}
        />
      ) : (
        <div className="scroller loading-skeleton" aria-busy>
          {Array.from({ length: 6 }, (_, i) => (
            <div className="skel" key={i}><span className="a" /><span className="l" style={{ width: `${40 + ((i * 23) % 50)}%` }} /></div>
          ))}
        </div>
      )}
      <TypingLine s={s} channel={channel.id} />
      <Composer
        channel={channel.id}
        placeholder={channel.dm ? `Message ${name}` : `Message #${name}`}
        members={s.members}
        items={data?.items ?? []}
        me={me}
      />
    </main>
  );
}

export function ThreadPanel({ s }: { s: State }) {
  const root = s.threadRoot;
  if (!root) return null;
  const replies = s.threads[root.id] ?? [];
  const me = s.me?.person ?? "";
  const myRole = s.members.find((m) => m.person === me)?.role ?? "member";
  const canModerate = myRole === "owner" || myRole === "admin";
  const common = { me, myName: s.me?.name ?? "", canModerate, presence: undefined, inThread: true };
  return (
    <aside className="thread" aria-label="Thread">
      <header className="channel-header">
        <div className="title">
          <h2>Thread</h2>
          <span className="topic">#{root.channel}</span>
        </div>
        <button className="icon-btn" onClick={closeThread} title="Close thread" aria-label="Close thread">
          <Icon d="M6 6l12 12M18 6 6 18" />
        </button>
      </header>
      <div className="thread-body">
        <MessageItem message={root} grouped={false} editing={s.editing === root.id} focused={false} {...common} />
        <div className="replies-sep">
          <span>{replies.length} {replies.length === 1 ? "reply" : "replies"}</span>
        </div>
        {replies.map((m, i) => {
          const prev = replies[i - 1];
          const grouped = !!prev && prev.author.key === m.author.key && m.ts - prev.ts < 5 * 60_000;
          return (
            <MessageItem key={m.id} message={m} grouped={grouped} editing={s.editing === m.id} focused={s.focus === m.id} {...common} />
          );
        })}
      </div>
      <Composer channel={root.channel_id} thread={root.id} placeholder="Reply…" members={s.members} items={replies} me={me} />
    </aside>
  );
}
