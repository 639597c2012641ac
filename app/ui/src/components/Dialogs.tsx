import { useEffect, useState, type ReactNode } from "react";
import { call, unsupported, type Invite } from "../api";
import {
  attempt,
  createChannel,
  createWorkspace,
  join,
  openDm,
  removeMember,
  setName,
  setRole,
  setTheme,
  toast,
  update,
  type State,
  type Theme,
} from "../store";
import { Avatar, PresenceDot } from "./Avatar";

export function Modal({ title, children, wide }: { title: string; children: ReactNode; wide?: boolean }) {
  const close = () => update({ dialog: null });
  useEffect(() => {
    const k = (e: KeyboardEvent) => e.key === "Escape" && close();
    document.addEventListener("keydown", k);
    return () => document.removeEventListener("keydown", k);
  }, []);
  return (
    <div className="overlay" onMouseDown={close}>
      <div className={wide ? "modal wide" : "modal"} role="dialog" aria-label={title} onMouseDown={(e) => e.stopPropagation()}>
        <header>
          <h2>{title}</h2>
          <button className="icon-btn" onClick={close} aria-label="Close">✕</button>
        </header>
        {children}
      </div>
    </div>
  );
}

/** A form whose submit runs `action` (resolving to an error sentence or null) and shows it. */
function useForm(action: () => Promise<string | null>, onDone?: () => void) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = async (e?: React.FormEvent) => {
    e?.preventDefault();
    setBusy(true);
    const err = await action();
    setBusy(false);
    setError(err);
    if (!err) onDone?.();
  };
  return { busy, error, submit };
}

export function CreateChannel() {
  const [name, setNameV] = useState("");
  const [topic, setTopic] = useState("");
  const [priv, setPriv] = useState(false);
  const f = useForm(() => createChannel(name.trim().replace(/^#/, ""), topic.trim(), priv), () => update({ dialog: null }));
  return (
    <Modal title="Create a channel">
      <form onSubmit={f.submit}>
        <label>Name<input autoFocus value={name} onChange={(e) => setNameV(e.target.value.toLowerCase().replace(/\s+/g, "-"))} placeholder="e.g. design-reviews" /></label>
        <label>Topic <span className="muted">(optional)</span><input value={topic} onChange={(e) => setTopic(e.target.value)} placeholder="What is it about?" /></label>
        <label className="check"><input type="checkbox" checked={priv} onChange={(e) => setPriv(e.target.checked)} /> Private: only invited members can see it</label>
        {f.error && <div className="form-error" role="alert">{f.error}</div>}
        <div className="buttons"><button className="primary" disabled={!name.trim() || f.busy}>Create</button></div>
      </form>
    </Modal>
  );
}

export function InviteDialog() {
  const [invite, setInvite] = useState<Invite | null>(null);
  const [role, setRoleV] = useState("member");
  const [error, setError] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const make = async () => {
    setError(null);
    setCopied(false);
    try {
      setInvite(await call("invite", { role, expires_secs: 86_400 }));
    } catch (e) {
      setError((e as Error).message);
    }
  };
  return (
    <Modal title="Invite people">
      <p className="muted">An invite is a signed ticket, good for one person for 24 hours. Send it any way you like; they paste it into Flyt.</p>
      <label>Role<select value={role} onChange={(e) => setRoleV(e.target.value)}><option value="member">Member</option><option value="admin">Admin</option></select></label>
      {invite && (
        <div className="ticket">
          <textarea readOnly value={invite.ticket} aria-label="Invite ticket" onFocus={(e) => e.target.select()} />
          <div className="muted">Expires {new Date(invite.expires_ts).toLocaleString()}</div>
        </div>
      )}
      {error && <div className="form-error" role="alert">{error}</div>}
      <div className="buttons">
        {invite && (
          <button onClick={() => void navigator.clipboard?.writeText(invite.ticket).then(() => setCopied(true), () => setError("Could not reach the clipboard: select the ticket and copy it."))}>
            {copied ? "Copied ✓" : "Copy ticket"}
          </button>
        )}
        <button className="primary" onClick={() => void make()}>{invite ? "New ticket" : "Create invite ticket"}</button>
      </div>
    </Modal>
  );
}

export function MembersDialog({ s }: { s: State }) {
  const me = s.me?.person;
  const myRole = s.members.find((m) => m.person === me)?.role;
  const admin = myRole === "owner" || myRole === "admin";
  const members = s.members.filter((m) => m.role !== "removed").sort((a, b) => a.name.localeCompare(b.name));
  return (
    <Modal title={`Members · ${members.length}`}>
      <ul className="member-list">
        {members.map((m) => {
          const presence = s.presence[m.person] ?? m.online;
          return (
            <li key={m.person} data-testid="member">
              <Avatar name={m.name} id={m.person} size={32} presence={presence} />
              <div className="who">
                <b>{m.name}{m.person === me ? " (you)" : ""}</b>
                <span className="muted"><PresenceDot state={presence} /> {presence ?? "offline"}</span>
              </div>
              <span className={`role ${m.role}`}>{m.role}</span>
              {admin && m.person !== me && m.role !== "owner" && (
                <div className="member-actions">
                  <button onClick={() => void setRole(m.person, m.role === "admin" ? "member" : "admin")}>
                    {m.role === "admin" ? "Make member" : "Make admin"}
                  </button>
                  <button className="danger" onClick={() => window.confirm(`Remove ${m.name} from the workspace?`) && void removeMember(m.person)}>Remove</button>
                </div>
              )}
              {!admin && m.person !== me && (
                <button onClick={() => void openDm([m.name]).then((e) => e && toast(e))}>Message</button>
              )}
            </li>
          );
        })}
      </ul>
    </Modal>
  );
}

export function NewDm({ s }: { s: State }) {
  const [picked, setPicked] = useState<string[]>([]);
  const f = useForm(() => openDm(picked));
  const others = s.members.filter((m) => m.person !== s.me?.person && m.role !== "removed");
  return (
    <Modal title="New direct message">
      <ul className="member-list pick">
        {others.map((m) => (
          <li key={m.person}>
            <label className="check">
              <input type="checkbox" checked={picked.includes(m.name)} onChange={(e) => setPicked((p) => (e.target.checked ? [...p, m.name] : p.filter((x) => x !== m.name)))} />
              <Avatar name={m.name} id={m.person} size={24} /> {m.name}
            </label>
          </li>
        ))}
        {others.length === 0 && <li className="muted">Invite someone first: there is nobody else here yet.</li>}
      </ul>
      {f.error && <div className="form-error" role="alert">{f.error}</div>}
      <div className="buttons"><button className="primary" disabled={!picked.length || f.busy} onClick={() => void f.submit()}>Open conversation</button></div>
    </Modal>
  );
}

function Relays() {
  const [relays, setRelays] = useState<unknown[] | null>(null);
  const [url, setUrl] = useState("");
  const [error, setError] = useState<string | null>(null);
  const load = () =>
    call("relays").then(setRelays, (e: Error) =>
      setError(unsupported(e) ? "This node does not manage relays yet: it syncs directly with peers." : e.message),
    );
  useEffect(() => void load(), []);
  const add = async () => {
    setError(null);
    try {
      await call("relay_add", { url: url.trim() });
      setUrl("");
      await load();
    } catch (e) {
      setError((e as Error).message);
    }
  };
  const label = (r: unknown) => (typeof r === "string" ? r : (r as { url?: string }).url ?? JSON.stringify(r));
  return (
    <section>
      <h3>Relays</h3>
      <p className="muted">Always-on peers that keep your workspace in sync while you are offline.</p>
      <ul className="plain">
        {relays?.map((r) => (
          <li key={label(r)}>
            <code>{label(r)}</code> <button onClick={() => void attempt(() => call("relay_remove", { url: label(r) })).then(load)}>Remove</button>
          </li>
        ))}
        {relays?.length === 0 && <li className="muted">No relays: peers sync directly.</li>}
      </ul>
      {relays !== null && <form className="inline" onSubmit={(e) => { e.preventDefault(); void add(); }}>
        <input value={url} onChange={(e) => setUrl(e.target.value)} placeholder="https://relay.example.com" aria-label="Relay URL" />
        <button disabled={!url.trim()}>Add relay</button>
      </form>}
      {error && <div className="form-error" role="alert">{error}</div>}
    </section>
  );
}

function Devices({ s }: { s: State }) {
  const [devices, setDevices] = useState<unknown[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(
    () =>
      void call("devices").then(setDevices, (e: Error) =>
        setError(unsupported(e) ? "Linking more devices is not available in this node yet." : e.message),
      ),
    [],
  );
  const label = (d: unknown) => (typeof d === "string" ? d : (d as { name?: string; device?: string }).name ?? (d as { device?: string }).device ?? JSON.stringify(d));
  return (
    <section>
      <h3>Linked devices</h3>
      <ul className="plain">
        <li>This device <code>{s.me?.device?.slice(0, 16)}</code></li>
        {devices?.map((d) => <li key={label(d)}><code>{label(d)}</code></li>)}
      </ul>
      {error && <p className="muted">{error}</p>}
    </section>
  );
}

export function Settings({ s }: { s: State }) {
  const [name, setNameV] = useState(s.me?.name ?? "");
  const [saved, setSaved] = useState(false);
  return (
    <Modal title="Settings" wide>
      <section>
        <h3>Profile</h3>
        <form className="inline" onSubmit={(e) => { e.preventDefault(); void setName(name.trim()).then(setSaved); }}>
          <input value={name} onChange={(e) => { setNameV(e.target.value); setSaved(false); }} aria-label="Display name" />
          <button disabled={!name.trim() || name === s.me?.name}>Save</button>
          {saved && <span className="muted">Saved ✓</span>}
        </form>
      </section>
      <section>
        <h3>Appearance</h3>
        <div className="segmented" role="radiogroup" aria-label="Theme">
          {(["system", "light", "dark"] as Theme[]).map((t) => (
            <button key={t} role="radio" aria-checked={s.theme === t} className={s.theme === t ? "on" : ""} onClick={() => setTheme(t)}>
              {t === "system" ? "Follow system" : t[0]!.toUpperCase() + t.slice(1)}
            </button>
          ))}
        </div>
      </section>
      <Relays />
      <Devices s={s} />
    </Modal>
  );
}

/** Create a workspace or join one with a ticket (onboarding and the rail's + button). */
export function WorkspaceForm({ onDone }: { onDone?: () => void }) {
  const [mode, setMode] = useState<"create" | "join">("create");
  const [name, setNameV] = useState("");
  const [ticket, setTicket] = useState("");
  const f = useForm(() => (mode === "create" ? createWorkspace(name.trim()) : join(ticket)), onDone);
  return (
    <form onSubmit={f.submit} className="ws-form">
      <div className="segmented" role="tablist">
        <button type="button" role="tab" aria-selected={mode === "create"} className={mode === "create" ? "on" : ""} onClick={() => setMode("create")}>Create a workspace</button>
        <button type="button" role="tab" aria-selected={mode === "join"} className={mode === "join" ? "on" : ""} onClick={() => setMode("join")}>Join with an invite</button>
      </div>
      {mode === "create" ? (
        <label>Workspace name<input autoFocus value={name} onChange={(e) => setNameV(e.target.value)} placeholder="e.g. Acme Inc" /></label>
      ) : (
        <label>Invite ticket<textarea autoFocus value={ticket} onChange={(e) => setTicket(e.target.value)} placeholder="Paste the flyt1… ticket someone sent you" rows={3} aria-label="Invite ticket" /></label>
      )}
      {f.error && <div className="form-error" role="alert">{f.error}</div>}
      <div className="buttons">
        <button className="primary" disabled={f.busy || (mode === "create" ? !name.trim() : !ticket.trim())}>
          {f.busy ? (mode === "join" ? "Joining…" : "Creating…") : mode === "create" ? "Create workspace" : "Join workspace"}
        </button>
      </div>
    </form>
  );
}

export function AddWorkspace() {
  return (
    <Modal title="Add a workspace">
      <WorkspaceForm onDone={() => update({ dialog: null })} />
    </Modal>
  );
}
