import type { Presence } from "../api";

const HUES = [211, 262, 330, 12, 32, 152, 178, 190, 290, 350];

/** A stable hue for a person key or name. */
export function hueOf(key: string): number {
  let h = 0;
  for (let i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
  return HUES[h % HUES.length]!;
}

export function initials(name: string): string {
  const parts = name.trim().split(/[\s._-]+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0]![0]! + parts[1]![0]! : [...name][0] ?? "?";
  return s.toUpperCase();
}

export function Avatar({
  name,
  id,
  size = 36,
  presence,
}: {
  name: string;
  id: string;
  size?: number;
  presence?: Presence | undefined;
}) {
  return (
    <span
      className="avatar"
      style={{ width: size, height: size, fontSize: size * 0.4, ["--hue" as string]: hueOf(id) }}
      aria-hidden
    >
      {initials(name)}
      {presence && <span className={`presence ${presence}`} />}
    </span>
  );
}

export function PresenceDot({ state }: { state: Presence | undefined }) {
  return <span className={`dot ${state ?? "offline"}`} title={state ?? "offline"} />;
}
