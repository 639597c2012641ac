import { useState } from "react";
import { deviceJoin, init, type State } from "../store";
import { WorkspaceForm } from "./Dialogs";

/** First run: a name (or linking to another device of mine), then a workspace. */
export function Onboarding({ s }: { s: State }) {
  const [name, setName] = useState("");
  const [ticket, setTicket] = useState("");
  const [linking, setLinking] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const named = s.me?.initialized;
  const run = async (f: () => Promise<string | null>) => {
    setBusy(true);
    setError(await f());
    setBusy(false);
  };
  const switchTo = (link: boolean) => {
    setLinking(link);
    setError(null);
  };
  return (
    <div className="onboarding">
      <div className="card">
        <div className="logo">
          <span className="mark">f</span> Flyt
        </div>
        {named ? (
          <>
            <h1>Hi {s.me?.name}, let’s get you a workspace</h1>
            <p className="muted">Start a new one for your team, or paste the invite ticket a teammate sent you.</p>
            <WorkspaceForm />
          </>
        ) : linking ? (
          <form onSubmit={(e) => { e.preventDefault(); void run(() => deviceJoin(ticket)); }}>
            <h1>Link to your other device</h1>
            <p className="muted">In Flyt on your other computer, open Settings, choose <b>Link a new device</b>, and paste the ticket here. Keep Flyt running there until this one is linked.</p>
            <label>
              Device link ticket
              <textarea autoFocus value={ticket} onChange={(e) => setTicket(e.target.value)} placeholder="flytdev1…" rows={3} aria-label="Device link ticket" spellCheck={false} />
            </label>
            {error && <div className="form-error" role="alert">{error}</div>}
            <div className="buttons">
              <button type="button" onClick={() => switchTo(false)}>Back</button>
              <button className="primary" disabled={!ticket.trim() || busy}>{busy ? "Linking…" : "Link this device"}</button>
            </div>
          </form>
        ) : (
          <form onSubmit={(e) => { e.preventDefault(); void run(() => init(name.trim())); }}>
            <h1>Welcome to Flyt</h1>
            <p className="muted">Team chat that lives on your own computer first. It works offline, and syncs with your team when it can.</p>
            <label>
              What should people call you?
              <input autoFocus value={name} onChange={(e) => setName(e.target.value)} placeholder="Your name" aria-label="Your name" />
            </label>
            {error && <div className="form-error" role="alert">{error}</div>}
            <div className="buttons">
              <button className="primary" disabled={!name.trim() || busy}>Continue</button>
            </div>
            <p className="alt muted">
              Already use Flyt on another computer? <button type="button" className="link" onClick={() => switchTo(true)}>Link to my other device</button>
            </p>
          </form>
        )}
      </div>
    </div>
  );
}
