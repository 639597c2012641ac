import { useEffect, useState } from "react";
import { call, type Device, type Invite, type Relay } from "../api";
import { canManage } from "../lib/channels";
import { setName, setTheme, type State, type Theme } from "../store";
import { CopyButton, Modal } from "./Dialogs";

const DAY = { year: "numeric", month: "short", day: "numeric" } as const;

/** Calls `load` now and every few seconds while mounted (what is connected changes on its own). */
function usePolled(load: () => void) {
  useEffect(() => {
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, []);
}

function ServerIcon() {
  return (
    <svg width="16" height="16" viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" strokeLinejoin="round">
      <rect x="3" y="4" width="18" height="7" rx="2" />
      <rect x="3" y="13" width="18" height="7" rx="2" />
      <path d="M7 7.5h.01M7 16.5h.01" />
    </svg>
  );
}

function LaptopIcon() {
  return (
    <svg width="16" height="16" viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" strokeLinejoin="round">
      <rect x="4" y="5" width="16" height="11" rx="2" />
      <path d="M2 19h20" />
    </svg>
  );
}

function Connected({ on }: { on: boolean }) {
  return (
    <>
      <span className={`dot ${on ? "online" : "offline"}`} /> {on ? "Connected" : "Not connected"}
    </>
  );
}

function Relays({ s }: { s: State }) {
  const admin = canManage(s.workspaces.find((w) => w.current)?.role);
  const [relays, setRelays] = useState<Relay[] | null>(null);
  const [url, setUrl] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [note, setNote] = useState<string | null>(null);
  const load = () => call("relays").then(setRelays, (e: Error) => setError(e.message));
  usePolled(() => void load());
  const add = async () => {
    setError(null);
    setNote(null);
    setBusy(true);
    try {
      const r = await call("relay_add", { url: url.trim() });
      setUrl("");
      setNote(`Added ${r.url}. Everyone's Flyt now syncs through it too.`);
      await load();
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const remove = async (r: Relay) => {
    if (!window.confirm(`Stop syncing through ${r.url}? Every member's Flyt stops using it.`)) return;
    setError(null);
    setNote(null);
    try {
      const res = await call("relay_remove", { url: r.id });
      setNote(
        res.relay_told
          ? `Removed ${r.url}.`
          : `Removed ${r.url}. The relay did not answer, so it keeps its copy, but it gets nothing new.`,
      );
      await load();
    } catch (e) {
      setError((e as Error).message);
    }
  };
  return (
    <section data-testid="relays">
      <h3>Relays</h3>
      <p className="muted">Always-on peers that keep your workspace in sync while teammates are offline, and help devices reach each other.</p>
      {relays && relays.length > 0 && (
        <ul className="member-list settings-list">
          {relays.map((r) => (
            <li key={r.id} data-testid="relay">
              <span className="setting-icon" aria-hidden><ServerIcon /></span>
              <div className="who">
                <code className="url">{r.url}</code>
                <span className="muted">
                  <Connected on={r.connected} /> · added by {r.added_by}, {new Date(r.added_ts).toLocaleDateString(undefined, DAY)}
                </span>
              </div>
              {admin && <button className="danger" onClick={() => void remove(r)} aria-label={`Remove ${r.url}`}>Remove</button>}
            </li>
          ))}
        </ul>
      )}
      {relays?.length === 0 && <p className="empty-note">No relays yet: devices sync directly with each other while both are online.</p>}
      {admin ? (
        relays !== null && (
          <form className="inline" onSubmit={(e) => { e.preventDefault(); void add(); }}>
            <input value={url} onChange={(e) => { setUrl(e.target.value); setError(null); }} placeholder="http://relay.example.com:8787" aria-label="Relay URL" spellCheck={false} />
            <button disabled={!url.trim() || busy}>{busy ? "Checking…" : "Add relay"}</button>
          </form>
        )
      ) : (
        <p className="muted">Only owners and admins can add or remove relays.</p>
      )}
      {error && <div className="form-error" role="alert">{error}</div>}
      {note && <div className="form-note" role="status">{note}</div>}
    </section>
  );
}

function Devices() {
  const [devices, setDevices] = useState<Device[] | null>(null);
  const [link, setLink] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  usePolled(() => void call("devices").then(setDevices, (e: Error) => setError(e.message)));
  const make = async () => {
    setError(null);
    try {
      setLink(await call("device_link", { expires_secs: 600 }));
    } catch (e) {
      setError((e as Error).message);
    }
  };
  return (
    <section data-testid="devices">
      <h3>Linked devices</h3>
      <p className="muted">A linked device is you on another computer: same name, same workspaces, your messages on both.</p>
      <ul className="member-list settings-list">
        {devices?.map((d) => (
          <li key={d.device} data-testid="device">
            <span className="setting-icon" aria-hidden><LaptopIcon /></span>
            <div className="who">
              <b>{d.this ? "This device" : "Another device"}</b>
              <span className="muted">
                {d.this ? "You are using it now" : <Connected on={d.connected} />} · <code>{d.device.slice(0, 12)}</code>
              </span>
            </div>
          </li>
        ))}
      </ul>
      {link && (
        <div className="ticket">
          <textarea readOnly value={link.ticket} aria-label="Device link ticket" onFocus={(e) => e.target.select()} />
          <ol className="steps">
            <li>On the new computer, open Flyt, choose <b>Link to my other device</b> and paste this ticket. In a shell: <code>flyt device join TICKET</code> on a fresh home.</li>
            <li>Keep Flyt running here until it is linked: the new device fetches your workspaces from this one.</li>
          </ol>
          <div className="muted">Works once, until {new Date(link.expires_ts).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })}. Whoever has it can become you: send it only to yourself.</div>
        </div>
      )}
      {error && <div className="form-error" role="alert">{error}</div>}
      <div className="buttons">
        {link && <CopyButton text={link.ticket} onError={setError} />}
        <button className={link ? "" : "primary"} onClick={() => void make()}>{link ? "New ticket" : "Link a new device"}</button>
      </div>
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
      <Relays s={s} />
      <Devices />
    </Modal>
  );
}
