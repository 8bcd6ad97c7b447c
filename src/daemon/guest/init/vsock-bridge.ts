/**
 * The guest side of the agent's vsock channel (Firecracker): Node cannot listen on AF_VSOCK, so this Python
 * program (python3 is in every image) listens on the agent's vsock port and passes each connection, byte for
 * byte both ways, to the agent's unix socket (`banger-agent --listen`). Firecracker's host end forwards
 * `CONNECT <port>` from the VM's vsock socket to it (guest/vsock.ts). It holds no state of its own: a bridge
 * that outlives a respawned agent goes on serving the new one at the same path.
 *
 * BANGER_BRIDGE_LISTEN (a unix socket path) replaces the vsock listener: tests run the bridge on a host that
 * has no vsock.
 */
export const VSOCK_BRIDGE = `import os, socket, sys, threading

port, target = int(sys.argv[1]), sys.argv[2]


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(conn):
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        agent.connect(target)
    except OSError as e:
        print("banger-vsock-bridge: cannot reach the agent at %s: %s" % (target, e), file=sys.stderr, flush=True)
        conn.close()
        return
    back = threading.Thread(target=pump, args=(agent, conn), daemon=True)
    back.start()
    pump(conn, agent)
    back.join()
    conn.close()
    agent.close()


listen = os.environ.get("BANGER_BRIDGE_LISTEN")
if listen:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen)
else:
    server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    server.bind((socket.VMADDR_CID_ANY, port))
server.listen(16)
print("banger-vsock-bridge: port %d -> %s" % (port, target), file=sys.stderr, flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
`;
