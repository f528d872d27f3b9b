// A small MessagePack codec for the socket's kinwire.v1.msgpack subprotocol (docs/clients.md).
// No build step and nothing vendored: the envelope only carries maps, arrays, strings, numbers,
// booleans and nil, which is all this needs. Decoding also understands bin (as Uint8Array),
// float32 and 64-bit integers; ext types are refused, as the server never sends them.

const utf8 = new TextEncoder();
const utf8in = new TextDecoder("utf-8", { fatal: true });

export class MsgpackError extends Error {}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }
  room(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(x) { this.room(1); this.view.setUint8(this.pos, x); this.pos += 1; }
  u16(x) { this.room(2); this.view.setUint16(this.pos, x); this.pos += 2; }
  u32(x) { this.room(4); this.view.setUint32(this.pos, x); this.pos += 4; }
  bytes(b) { this.room(b.length); this.buf.set(b, this.pos); this.pos += b.length; }
  done() { return this.buf.slice(0, this.pos); }
}

function head(w, n, fix, fixMax, c8, c16, c32) {
  if (fix !== null && n <= fixMax) w.u8(fix | n);
  else if (c8 !== null && n < 0x100) { w.u8(c8); w.u8(n); }
  else if (n < 0x10000) { w.u8(c16); w.u16(n); }
  else { w.u8(c32); w.u32(n); }
}

function int(w, n) {
  if (n >= 0) {
    if (n < 0x80) w.u8(n);
    else if (n < 0x100) { w.u8(0xcc); w.u8(n); }
    else if (n < 0x10000) { w.u8(0xcd); w.u16(n); }
    else if (n < 0x100000000) { w.u8(0xce); w.u32(n); }
    else { w.u8(0xcf); w.room(8); w.view.setBigUint64(w.pos, BigInt(n)); w.pos += 8; }
  } else if (n >= -32) w.u8(n & 0xff);
  else if (n >= -0x80) { w.u8(0xd0); w.room(1); w.view.setInt8(w.pos, n); w.pos += 1; }
  else if (n >= -0x8000) { w.u8(0xd1); w.room(2); w.view.setInt16(w.pos, n); w.pos += 2; }
  else if (n >= -0x80000000) { w.u8(0xd2); w.room(4); w.view.setInt32(w.pos, n); w.pos += 4; }
  else { w.u8(0xd3); w.room(8); w.view.setBigInt64(w.pos, BigInt(n)); w.pos += 8; }
}

function write(w, v, depth) {
  if (depth > 64) throw new MsgpackError("too deeply nested");
  if (v === null || v === undefined) w.u8(0xc0);
  else if (v === false) w.u8(0xc2);
  else if (v === true) w.u8(0xc3);
  else if (typeof v === "number") {
    if (Number.isSafeInteger(v)) int(w, v);
    else { w.u8(0xcb); w.room(8); w.view.setFloat64(w.pos, v); w.pos += 8; }
  } else if (typeof v === "string") {
    const b = utf8.encode(v);
    head(w, b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
    w.bytes(b);
  } else if (v instanceof Uint8Array) {
    head(w, v.length, null, 0, 0xc4, 0xc5, 0xc6);
    w.bytes(v);
  } else if (Array.isArray(v)) {
    head(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
    for (const x of v) write(w, x, depth + 1);
  } else if (typeof v === "object") {
    // Like JSON.stringify: undefined members are left out.
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    head(w, keys.length, 0x80, 15, null, 0xde, 0xdf);
    for (const k of keys) {
      write(w, k, depth + 1);
      write(w, v[k], depth + 1);
    }
  } else throw new MsgpackError(`cannot encode ${typeof v}`);
}

/** value -> Uint8Array */
export function encode(value) {
  const w = new Writer();
  write(w, value, 0);
  return w.done();
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n > this.b.length) throw new MsgpackError("truncated");
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8() { return this.view.getUint8(this.need(1)); }
  u16() { return this.view.getUint16(this.need(2)); }
  u32() { return this.view.getUint32(this.need(4)); }
  str(n) { const at = this.need(n); return utf8in.decode(this.b.subarray(at, at + n)); }
  bin(n) { const at = this.need(n); return this.b.slice(at, at + n); }
}

function big(x) {
  const n = Number(x);
  if (!Number.isSafeInteger(n)) throw new MsgpackError("integer beyond 2^53");
  return n;
}

function read(r, depth) {
  if (depth > 64) throw new MsgpackError("too deeply nested");
  const t = r.u8();
  if (t < 0x80) return t;
  if (t < 0x90) return map(r, t & 0x0f, depth);
  if (t < 0xa0) return arr(r, t & 0x0f, depth);
  if (t < 0xc0) return r.str(t & 0x1f);
  if (t >= 0xe0) return t - 0x100;
  switch (t) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.bin(r.u8());
    case 0xc5: return r.bin(r.u16());
    case 0xc6: return r.bin(r.u32());
    case 0xca: return r.view.getFloat32(r.need(4));
    case 0xcb: return r.view.getFloat64(r.need(8));
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: return big(r.view.getBigUint64(r.need(8)));
    case 0xd0: return r.view.getInt8(r.need(1));
    case 0xd1: return r.view.getInt16(r.need(2));
    case 0xd2: return r.view.getInt32(r.need(4));
    case 0xd3: return big(r.view.getBigInt64(r.need(8)));
    case 0xd9: return r.str(r.u8());
    case 0xda: return r.str(r.u16());
    case 0xdb: return r.str(r.u32());
    case 0xdc: return arr(r, r.u16(), depth);
    case 0xdd: return arr(r, r.u32(), depth);
    case 0xde: return map(r, r.u16(), depth);
    case 0xdf: return map(r, r.u32(), depth);
    default: throw new MsgpackError(`unsupported type 0x${t.toString(16)}`);
  }
}

function arr(r, n, depth) {
  if (n > r.b.length - r.pos) throw new MsgpackError("truncated"); // each item is >= 1 byte
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = read(r, depth + 1);
  return out;
}

function map(r, n, depth) {
  if (2 * n > r.b.length - r.pos) throw new MsgpackError("truncated");
  const out = {};
  for (let i = 0; i < n; i++) {
    const k = read(r, depth + 1);
    if (typeof k !== "string" && typeof k !== "number") throw new MsgpackError("map key");
    // defineProperty: a "__proto__" key stays plain data, never the object's prototype.
    Object.defineProperty(out, String(k), { value: read(r, depth + 1), enumerable: true,
                                            writable: true, configurable: true });
  }
  return out;
}

/** ArrayBuffer | Uint8Array -> value; throws MsgpackError on anything malformed. */
export function decode(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const r = new Reader(bytes);
  const v = read(r, 0);
  if (r.pos !== bytes.length) throw new MsgpackError("trailing bytes");
  return v;
}
