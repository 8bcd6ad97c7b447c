import { generateKeyPairSync, randomBytes } from 'node:crypto';

/**
 * ed25519 key pairs in OpenSSH's own formats, from node's crypto.
 *
 * ssh2's generateKeyPairSync is not used: it drops leading zero bytes of the 32-byte public key (about one
 * key in 128), and OpenSSH then refuses the key ("error in libcrypto"), so a VM would boot without sshd.
 */
export interface OpenSshKeyPair {
  /** "-----BEGIN OPENSSH PRIVATE KEY-----" file content. */
  privateKey: string;
  /** One line: "ssh-ed25519 AAAA... comment". */
  publicKey: string;
}

function sshString(b: Buffer | string): Buffer {
  const data = typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  return Buffer.concat([len, data]);
}

function uint32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** Encodes a raw ed25519 key (32-byte seed, 32-byte public key) as OpenSSH files. */
export function encodeOpenSshEd25519(seed: Buffer, pub: Buffer, comment: string): OpenSshKeyPair {
  if (seed.length !== 32 || pub.length !== 32) throw new Error('ed25519 keys are 32 bytes');
  const pubBlob = Buffer.concat([sshString('ssh-ed25519'), sshString(pub)]);
  const check = randomBytes(4);
  let priv = Buffer.concat([
    check,
    check,
    sshString('ssh-ed25519'),
    sshString(pub),
    sshString(Buffer.concat([seed, pub])),
    sshString(comment),
  ]);
  const pad: number[] = [];
  for (let i = 1; (priv.length + pad.length) % 8 !== 0; i++) pad.push(i);
  priv = Buffer.concat([priv, Buffer.from(pad)]);
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0', 'latin1'),
    sshString('none'),
    sshString('none'),
    sshString(''),
    uint32(1),
    sshString(pubBlob),
    sshString(priv),
  ]);
  const b64 = body.toString('base64').replace(/(.{70})/g, '$1\n').replace(/\n$/, '');
  return {
    privateKey: `-----BEGIN OPENSSH PRIVATE KEY-----\n${b64}\n-----END OPENSSH PRIVATE KEY-----\n`,
    publicKey: `ssh-ed25519 ${pubBlob.toString('base64')}${comment ? ` ${comment}` : ''}`,
  };
}

/** A fresh ed25519 key pair in OpenSSH formats. */
export function generateEd25519(comment: string): OpenSshKeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  return encodeOpenSshEd25519(Buffer.from(jwk.d!, 'base64url'), Buffer.from(jwk.x!, 'base64url'), comment);
}
