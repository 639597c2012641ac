import { useState } from "react";
import { init, type State } from "../store";
import { WorkspaceForm } from "./Dialogs";

export function Onboarding({ s }: { s: State }) {
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const named = s.me?.initialized;
  return (
    <div className="onboarding">
      <div className="card">
        <div className="logo">
          <span className="mark">f</span> Flyt
        </div>
        {!named ? (
          <form
            onSubmit={async (e) => {
              e.preventDefault();
              setBusy(true);
              setError(await init(name.trim()));
              setBusy(false);
            }}
          >
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
          </form>
        ) : (
          <>
            <h1>Hi {s.me?.name}, let’s get you a workspace</h1>
            <p className="muted">Start a new one for your team, or paste the invite ticket a teammate sent you.</p>
            <WorkspaceForm />
          </>
        )}
      </div>
    </div>
  );
}
