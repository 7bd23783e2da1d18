// How the pages of p2pshare write what comes from the network: one copy,
// served to the peer's page as /text.js and written into the metadata
// server's page where it says "// text.js".

// Controls, format characters (bidi controls among them), lone surrogates,
// private use, unassigned code points, line and paragraph separators, and
// the backslash itself, as p2pshare.display.shown writes them: \x07,
// \u202e, \U000e0001, \\.  "evil\u202egpj.exe" never shows as "evilexe.jpg".
const HIDDEN = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\\]/gu;

function shown(text) {
  return String(text).replace(HIDDEN, c => {
    if (c === "\\") return "\\\\";
    const n = c.codePointAt(0), hex = n.toString(16);
    return n < 0x100 ? "\\x" + hex.padStart(2, "0")
      : n < 0x10000 ? "\\u" + hex.padStart(4, "0") : "\\U" + hex.padStart(8, "0");
  });
}

// A size as p2pshare.disk.human_size writes it: powers of 1024 (as
// --upload-rate 8M reads them), one decimal rounded half up (toFixed), and
// the next unit where the number would round to 1024.
const UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

function human(n) {
  if (!Number.isFinite(n)) return `${n} B`;
  let shown = n.toFixed(0);
  if (Number(shown) < 1024) return `${shown} B`;
  let i = -1;
  do {
    n /= 1024;
    i++;
    shown = n.toFixed(1);
  } while (Number(shown) >= 1024 && i < UNITS.length - 1);
  return `${shown} ${UNITS[i]}`;
}
