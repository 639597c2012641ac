import { useEffect } from "react";
import { onEventStream } from "./api";
import { ChannelView, ThreadPanel } from "./components/Channel";
import { AddWorkspace, CreateChannel, InviteDialog, MembersDialog, NewDm } from "./components/Dialogs";
import { Onboarding } from "./components/Onboarding";
import { SearchDialog } from "./components/Search";
import { Settings } from "./components/Settings";
import { Sidebar, WorkspaceRail } from "./components/Sidebar";
import { boot, closeThread, getState, refreshStatus, startEvents, update, useChat } from "./store";

export function App() {
  const s = useChat();

  useEffect(() => {
    onEventStream((up) => {
      update({ stream: up }, false);
      if (up) void refreshStatus();
    });
    const stop = startEvents();
    void boot();
    return stop;
  }, []);

  useEffect(() => {
    const k = (e: KeyboardEvent) => {
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "k") {
        e.preventDefault();
        update({ dialog: "search" });
      } else if (e.key === "Escape" && !e.defaultPrevented && getState().dialog === null && !getState().editing) {
        closeThread();
      }
    };
    window.addEventListener("keydown", k);
    return () => window.removeEventListener("keydown", k);
  }, []);

  const toasts = (
    <div className="toasts" aria-live="assertive">
      {s.toasts.map((t) => (
        <div key={t.id} className={`toast ${t.kind}`} role="alert">
          {t.text}
        </div>
      ))}
    </div>
  );

  if (!s.booted) return <div className="splash"><span className="mark">f</span></div>;
  const ws = s.workspaces.find((w) => w.current);
  if (!s.me?.initialized || !ws)
    return (
      <>
        <Onboarding s={s} />
        {toasts}
      </>
    );
  const channel = s.channels.find((c) => c.id === s.current);
  return (
    <div className={s.threadRoot ? "app with-thread" : "app"}>
      <WorkspaceRail workspaces={s.workspaces} />
      <Sidebar s={s} />
      {channel ? (
        <ChannelView s={s} channel={channel} />
      ) : (
        <main className="channel empty-state">
          <h2>No channels yet</h2>
          <p className="muted">Create one to start the conversation.</p>
          <button className="primary" onClick={() => update({ dialog: "channel" })}>Create a channel</button>
        </main>
      )}
      <ThreadPanel s={s} />
      {s.dialog === "search" && <SearchDialog channel={s.current} />}
      {s.dialog === "channel" && <CreateChannel />}
      {s.dialog === "invite" && <InviteDialog />}
      {s.dialog === "members" && <MembersDialog s={s} />}
      {s.dialog === "settings" && <Settings s={s} />}
      {s.dialog === "dm" && <NewDm s={s} />}
      {s.dialog === "workspace" && <AddWorkspace />}
      {toasts}
    </div>
  );
}
