/**
 * The byte-level BPE merge engine. Symbols are interned strings of the GPT-2 byte alphabet; merges are looked up
 * by (left symbol, right symbol) pairs of small integers. A word is merged exactly as llama.cpp's
 * llm_tokenizer_bpe_session does: repeatedly merge the adjacent pair of lowest rank, the leftmost one on ties.
 */
import { BYTE_TO_CHAR } from './bytes.js';

export class BpeMerges {
  /** Vocabulary texts: symbols below `nTokens` are token ids. */
  private readonly tokens: readonly string[];
  private readonly nTokens: number;
  private readonly lookup: (text: string) => number | undefined;
  /** Strings that occur in merges but are not tokens get ids from nTokens up. */
  private readonly extraIds = new Map<string, number>();
  private readonly extraTexts: string[] = [];
  /** Open-addressing hash table (left, right) -> rank; empty slots have rank -1. */
  private tableLeft: Int32Array;
  private tableRight: Int32Array;
  private tableRank: Int32Array;
  private readonly tableMask: number;
  /** mergeResult[rank] is the merged symbol, or -1 until first needed. */
  private readonly mergeResult: Int32Array;
  /** byteSymbol[b] is the symbol of the single byte b. */
  readonly byteSymbol = new Int32Array(256);

  // scratch space for `merge`, grown as needed
  private sym = new Int32Array(64);
  private prev = new Int32Array(64);
  private next = new Int32Array(64);
  private heap = new Float64Array(128);

  /** Number of distinct (left, right) pairs: duplicates keep the first rank, as llama.cpp's map emplace does. */
  readonly size: number;

  /**
   * @param merges `tokenizer.ggml.merges`, "left right" per line, in rank order
   * @param tokens vocabulary texts
   * @param lookup text -> canonical token id (the last id with that text, as llama.cpp's token_to_id)
   */
  constructor(merges: readonly string[], tokens: readonly string[], lookup: (text: string) => number | undefined) {
    this.tokens = tokens;
    this.nTokens = tokens.length;
    this.lookup = lookup;
    let cap = 1024;
    while (cap < merges.length * 2) cap *= 2;
    this.tableMask = cap - 1;
    this.tableLeft = new Int32Array(cap);
    this.tableRight = new Int32Array(cap);
    this.tableRank = new Int32Array(cap).fill(-1);
    this.mergeResult = new Int32Array(merges.length).fill(-1);
    let size = 0;
    for (let rank = 0; rank < merges.length; rank++) {
      const m = merges[rank]!;
      // llama.cpp: the first space at or after byte 1 separates the two halves; lines without one never match
      const sp = m.indexOf(' ', 1);
      if (sp < 0 || sp === m.length - 1) continue;
      const left = m.slice(0, sp);
      const right = m.slice(sp + 1);
      const l = this.intern(left);
      const r = this.intern(right);
      if (this.insert(l, r, rank)) size++; // the merged symbol is resolved on first use (see `result`)
    }
    this.size = size;
    for (let b = 0; b < 256; b++) this.byteSymbol[b] = this.intern(BYTE_TO_CHAR[b]!);
  }

  private intern(s: string): number {
    const id = this.lookup(s);
    if (id !== undefined) return id;
    let x = this.extraIds.get(s);
    if (x === undefined) {
      x = this.nTokens + this.extraTexts.length;
      this.extraTexts.push(s);
      this.extraIds.set(s, x);
    }
    return x;
  }

  private static hash(l: number, r: number): number {
    return (Math.imul(l, 0x9e3779b1) ^ Math.imul(r + 0x7f4a7c15, 0x85ebca6b)) >>> 0;
  }

  /** Adds (l, r) -> rank unless the pair is already present. */
  private insert(l: number, r: number, rank: number): boolean {
    let i = BpeMerges.hash(l, r) & this.tableMask;
    for (;;) {
      const k = this.tableRank[i]!;
      if (k < 0) {
        this.tableLeft[i] = l;
        this.tableRight[i] = r;
        this.tableRank[i] = rank;
        return true;
      }
      if (this.tableLeft[i] === l && this.tableRight[i] === r) return false;
      i = (i + 1) & this.tableMask;
    }
  }

  /** Merge rank of the adjacent pair (l, r), or -1. */
  private rank(l: number, r: number): number {
    let i = BpeMerges.hash(l, r) & this.tableMask;
    for (;;) {
      const k = this.tableRank[i]!;
      if (k < 0) return -1;
      if (this.tableLeft[i] === l && this.tableRight[i] === r) return k;
      i = (i + 1) & this.tableMask;
    }
  }

  /** The symbol made by merging (l, r) at `rank`. */
  private result(rank: number, l: number, r: number): number {
    let m = this.mergeResult[rank]!;
    if (m < 0) {
      m = this.intern(this.symbolText(l) + this.symbolText(r));
      this.mergeResult[rank] = m;
    }
    return m;
  }

  symbolText(sym: number): string {
    return sym < this.nTokens ? this.tokens[sym]! : this.extraTexts[sym - this.nTokens]!;
  }

  /** The token id of a symbol, or -1 when its text is not a vocabulary token. */
  symbolTokenId(sym: number): number {
    return sym < this.nTokens ? sym : -1;
  }

  private grow(n: number): void {
    let cap = this.sym.length;
    while (cap < n) cap *= 2;
    this.sym = new Int32Array(cap);
    this.prev = new Int32Array(cap);
    this.next = new Int32Array(cap);
    this.heap = new Float64Array(cap * 2);
  }

  /**
   * Merges the bytes of one word and calls `emit` with each resulting symbol, left to right.
   * Heap keys are rank * 2^32 + left position, so popping the minimum gives the lowest rank, leftmost first.
   * Entries go stale when either side has changed since the push; a stale entry no longer matches the current
   * pair's rank (ranks identify pairs uniquely) and is skipped, which is llama.cpp's "outdated bigram" check.
   */
  merge(bytes: Uint8Array, start: number, end: number, emit: (sym: number) => void): void {
    const n = end - start;
    if (n <= 0) return;
    if (n === 1) {
      emit(this.byteSymbol[bytes[start]!]!);
      return;
    }
    if (n > this.sym.length) this.grow(n);
    const sym = this.sym;
    const prev = this.prev;
    const next = this.next;
    for (let i = 0; i < n; i++) {
      sym[i] = this.byteSymbol[bytes[start + i]!]!;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }

    let heap = this.heap;
    let size = 0;
    const push = (key: number): void => {
      if (size >= heap.length) {
        const bigger = new Float64Array(heap.length * 2);
        bigger.set(heap);
        heap = bigger;
        this.heap = bigger;
      }
      let i = size++;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (heap[p]! <= key) break;
        heap[i] = heap[p]!;
        i = p;
      }
      heap[i] = key;
    };
    const pop = (): number => {
      const top = heap[0]!;
      const last = heap[--size]!;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= size) break;
        const r = l + 1;
        const c = r < size && heap[r]! < heap[l]! ? r : l;
        if (heap[c]! >= last) break;
        heap[i] = heap[c]!;
        i = c;
      }
      heap[i] = last;
      return top;
    };
    const TWO32 = 4294967296;

    for (let i = 0; i + 1 < n; i++) {
      const rk = this.rank(sym[i]!, sym[i + 1]!);
      if (rk >= 0) push(rk * TWO32 + i);
    }
    while (size > 0) {
      const key = pop();
      const rk = Math.floor(key / TWO32);
      const left = key - rk * TWO32;
      if (sym[left]! < 0) continue; // absorbed into its left neighbour
      const right = next[left]!;
      if (right < 0 || this.rank(sym[left]!, sym[right]!) !== rk) continue; // outdated
      sym[left] = this.result(rk, sym[left]!, sym[right]!);
      sym[right] = -1;
      const after = next[right]!;
      next[left] = after;
      if (after >= 0) prev[after] = left;
      const before = prev[left]!;
      if (before >= 0) {
        const r1 = this.rank(sym[before]!, sym[left]!);
        if (r1 >= 0) push(r1 * TWO32 + before);
      }
      if (after >= 0) {
        const r2 = this.rank(sym[left]!, sym[after]!);
        if (r2 >= 0) push(r2 * TWO32 + left);
      }
    }
    for (let i = 0; i >= 0; i = next[i]!) emit(sym[i]!);
  }
}
