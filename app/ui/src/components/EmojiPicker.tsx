import { useEffect, useRef, useState } from "react";

const EMOJI: [string, string][] = [
  ["👍", "thumbsup +1 yes"], ["❤️", "heart love"], ["😂", "joy laugh"], ["🎉", "tada party"],
  ["🙏", "pray thanks"], ["👀", "eyes look"], ["🔥", "fire"], ["✅", "check done"],
  ["🚀", "rocket ship"], ["😄", "smile happy"], ["😅", "sweat smile"], ["🤔", "thinking"],
  ["😮", "wow open mouth"], ["😢", "cry sad"], ["😡", "angry"], ["👏", "clap"],
  ["💯", "hundred"], ["✨", "sparkles"], ["👋", "wave hello"], ["🙌", "raised hands"],
  ["💡", "idea bulb"], ["⚠️", "warning"], ["❌", "x no"], ["➕", "plus"],
  ["🐛", "bug"], ["☕", "coffee"], ["🍕", "pizza"], ["🎯", "target"],
  ["📌", "pin"], ["🧪", "test"], ["🤝", "handshake"], ["😎", "cool"],
];

/** A small emoji palette with a filter; calls `onPick` and closes. */
export function EmojiPicker({ onPick, onClose }: { onPick: (e: string) => void; onClose: () => void }) {
  const [q, setQ] = useState("");
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const down = (e: MouseEvent) => {
      if (ref.current && !ref.current.contains(e.target as Node)) onClose();
    };
    const key = (e: KeyboardEvent) => {
      if (e.key !== "Escape") return;
      e.preventDefault();
      onClose();
    };
    document.addEventListener("mousedown", down);
    document.addEventListener("keydown", key);
    return () => {
      document.removeEventListener("mousedown", down);
      document.removeEventListener("keydown", key);
    };
  }, [onClose]);
  const shown = EMOJI.filter(([, names]) => names.includes(q.toLowerCase().replace(/:/g, "")));
  return (
    <div className="emoji-picker" ref={ref} role="dialog" aria-label="Pick a reaction">
      <input
        autoFocus
        placeholder="Search emoji"
        value={q}
        onChange={(e) => setQ(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && shown[0]) onPick(shown[0][0]);
        }}
      />
      <div className="grid">
        {shown.map(([e, names]) => (
          <button key={e} title={names.split(" ")[0]} onClick={() => onPick(e)}>
            {e}
          </button>
        ))}
      </div>
    </div>
  );
}
