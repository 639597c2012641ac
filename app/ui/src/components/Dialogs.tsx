import { useEffect, useState, type ReactNode } from "react";
import { call, type Invite } from "../api";
import { canManage } from "../lib/channels";
import {
  createChannel,
  createWorkspace,
  join,
  openDm,
  removeMember,
  setRole,
  toast,
  update,
  type State,
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
export function useForm(action: () => Promise<string | null>, onDone?: () => void) {
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

/** Copies a ticket to the clipboard, saying so (or, if the clipboard is out of reach, how). */
export function CopyButton({ text, onError }: { text: string; onError: (e: string) => void }) {
  const [copied, setCopied] = useState<string | null>(null);
  return (
    <button onClick={() => void navigator.clipboard?.writeText(text).then(() => setCopied(text), () => onError("Could not reach the clipboard: select the ticket and copy it."))}>
      {copied === text ? "Copied ✓" : "Copy ticket"}
    </button>
  );
}

export function InviteDialog() {
  const [invite, setInvite] = useState<Invite | null>(null);
  const [role, setRoleV] = useState("member");
  const [error, setError] = useState<string | null>(null);
  const make = async () => {
    setError(null);
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
        {invite && <CopyButton text={invite.ticket} onError={setError} />}
        <button className="primary" onClick={() => void make()}>{invite ? "New ticket" : "Create invite ticket"}</button>
      </div>
    </Modal>
  );
}

export function MembersDialog({ s }: { s: State }) {
  const me = s.me?.person;
  const admin = canManage(s.members.find((m) => m.person === me)?.role);
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
              {m.person !== me && (
                <div className="member-actions">
                  <button onClick={() => void openDm([m.person]).then((e) => e && toast(e))}>Message</button>
                  {admin && m.role !== "owner" && (
                    <>
                      <button onClick={() => void setRole(m.person, m.role === "admin" ? "member" : "admin")}>
                        {m.role === "admin" ? "Make member" : "Make admin"}
                      </button>
                      <button className="danger" onClick={() => window.confirm(`Remove ${m.name} from the workspace?`) && void removeMember(m.person)}>Remove</button>
                    </>
                  )}
                </div>
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
  const [filter, setFilter] = useState("");
  const f = useForm(() => openDm(picked));
  const others = s.members
    .filter((m) => m.person !== s.me?.person && m.role !== "removed")
    .sort((a, b) => a.name.localeCompare(b.name));
  const shown = others.filter((m) => m.name.toLowerCase().includes(filter.trim().toLowerCase()));
  const toggle = (person: string, on: boolean) => setPicked((p) => (on ? [...p, person] : p.filter((x) => x !== person)));
  return (
    <Modal title="New direct message">
      <p className="muted">Pick one person, or several for a group conversation. Only the people in it can read it.</p>
      {others.length > 6 && (
        <label>
          <input autoFocus value={filter} onChange={(e) => setFilter(e.target.value)} placeholder="Find someone" aria-label="Find someone" />
        </label>
      )}
      <ul className="member-list pick">
        {shown.map((m) => {
          const presence = s.presence[m.person] ?? m.online;
          return (
            <li key={m.person}>
              <label className="check">
                <input type="checkbox" checked={picked.includes(m.person)} onChange={(e) => toggle(m.person, e.target.checked)} aria-label={m.name} />
                <Avatar name={m.name} id={m.person} size={28} presence={presence} />
                <span className="who"><b>{m.name}</b><span className="muted">{presence ?? "offline"}</span></span>
              </label>
            </li>
          );
        })}
        {others.length === 0 && <li className="muted">Invite someone first: there is nobody else here yet.</li>}
      </ul>
      {f.error && <div className="form-error" role="alert">{f.error}</div>}
      <div className="buttons">
        <button className="primary" disabled={!picked.length || f.busy} onClick={() => void f.submit()}>
          {picked.length > 1 ? `Start group conversation (${picked.length + 1})` : "Open conversation"}
        </button>
      </div>
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
