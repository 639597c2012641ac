// How channels and DMs are named on screen.

import type { Channel, ChannelMember } from "../api";

/** The people in a DM other than me (a DM with only me: me). */
export function dmOthers(c: Channel, me: string | undefined): ChannelMember[] {
  const others = c.members.filter((m) => m.person !== me);
  return (others.length ? others : c.members).slice().sort((a, b) => a.name.localeCompare(b.name));
}

/** A channel's name as shown: a DM by the other people's names ("bob, carol"). */
export function channelTitle(c: Channel, me: string | undefined): string {
  if (!c.dm) return c.name;
  const others = dmOthers(c, me);
  if (others.length) return others.map((m) => m.name).join(", ");
  // No member list (yet): the node names a DM `@` and the others' names.
  return c.name.replace(/^@/, "").split(",").join(", ");
}

/** Whether a workspace role may manage the workspace (relays, roles, removing members). */
export function canManage(role: string | undefined): boolean {
  return role === "owner" || role === "admin";
}
