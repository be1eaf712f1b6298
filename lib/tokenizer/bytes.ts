/**
 * GPT-2's byte-level alphabet: every byte 0..255 maps to one printable code point, so that a byte-level BPE
 * vocabulary can be stored as text. Printable Latin-1 bytes map to themselves; the other 68 map to U+0100.. in
 * byte order (e.g. ' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A). Same table as llama.cpp's unicode_byte_to_utf8_map.
 */

/** BYTE_TO_CHAR[b] is the one-character string standing for byte b. */
export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

/** CHAR_TO_BYTE[codePoint] is the byte for a code point of the alphabet, or -1. Indexed up to U+0143. */
export const CHAR_TO_BYTE: Int16Array = buildCharToByte();

function isSelfMapped(b: number): boolean {
  return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

function buildByteToChar(): string[] {
  const out = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = String.fromCharCode(isSelfMapped(b) ? b : 256 + n++);
  }
  return out;
}

function buildCharToByte(): Int16Array {
  const out = new Int16Array(256 + 68).fill(-1);
  for (let b = 0; b < 256; b++) out[BYTE_TO_CHAR[b]!.charCodeAt(0)] = b;
  return out;
}

const utf8Encoder = new TextEncoder();

/** UTF-8 bytes of a string (lone surrogates become U+FFFD, as TextEncoder does). */
export function utf8Bytes(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}
