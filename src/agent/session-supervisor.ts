/**
 * A session's process is not the agent's child: it runs under this python3 supervisor, started in its own
 * session (setsid) and left running when the agent exits, so a session survives the agent being killed or
 * restarted, and output keeps flowing to disk while no agent runs. python3 because the image has it anyway
 * (terminals need it) and it costs a third of a Node process's memory.
 *
 * argv: SESSION_DIR. The agent writes `meta.json` (argv, cwd, tty, size, capBytes) first and sends
 * `{"env": {...}, "python": PATH, "ptyHelper": SOURCE}` on stdin (the environment never touches the disk).
 * The supervisor then:
 * - makes the process's stdin a FIFO, `SESSION_DIR/stdin` (0600, in a 0700 directory), and holds a writer of
 *   it open, so the process sees no end of input while nobody writes: the agent opens it for each send and
 *   writes there itself (through a control connection and this process, a send took ~10 ms more in a TCG
 *   guest), one send at a time (its own lock), so one send is never interleaved with another;
 * - listens on `SESSION_DIR/ctl.sock` (0600, in a 0700 directory), one command per connection, its first byte:
 *   `W` watch: a byte is sent after output was written (coalesced), and the connection closes after the
 *      session's end is recorded: a watcher learns of output and of the end without polling;
 *   `E` closes the process's stdin: removes the FIFO (a later send finds none) and closes the held writer;
 *   `S`+NAME signals its process group; `R`+"ROWS COLS\n" resizes its terminal;
 * - starts the command (in its own process group; under the pty helper for a tty) and prints one JSON line on
 *   stdout: `{"pid": N}` or `{"errno": "ENOENT", "message": ...}`, then closes stdout;
 * - appends the process's stdout and stderr to `stdout.log` / `stderr.log` (a byte's offset is its position
 *   in the file), up to capBytes per stream; past the cap it creates `capped` and keeps reading, dropping the
 *   bytes, so the process never blocks on its output;
 * - when the process has exited and its output is written (output from leftover children is waited for 1 s),
 *   writes `exit.json` (`{"state": "exited", "exitCode", "signal", "endedAt"}`, atomically) and exits.
 * A supervisor killed before that leaves no `exit.json`: the agent records the session as `ended`.
 */
export const SESSION_SUPERVISOR_SOURCE = String.raw`
import errno, json, os, signal, socket, subprocess, sys, threading, time
d = sys.argv[1]
def path(n):
    return os.path.join(d, n)
meta = json.load(open(path("meta.json")))
spec = json.loads(sys.stdin.buffer.read().decode())
cap = meta["capBytes"]
lock = threading.Lock()
watchers = []
state = {"capped": False, "finished": False}
ctl = path("ctl.sock")
try:
    os.unlink(ctl)
except OSError:
    pass
old = os.umask(0o077)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(ctl)
srv.listen(64)
fifo = path("stdin")
try:
    os.unlink(fifo)
except OSError:
    pass
os.mkfifo(fifo)
stdin_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
stdin_w = [os.open(fifo, os.O_WRONLY)]
os.set_blocking(stdin_r, True)
os.umask(old)
env = spec["env"]
argv = meta.get("run") or meta["argv"]
resize_w = None
fds = ()
if meta["tty"]:
    r, resize_w = os.pipe()
    env = dict(env)
    env["BANGER_PTY_CONTROL_FD"] = str(r)
    argv = [spec["python"], "-c", spec["ptyHelper"], str(meta["size"]["rows"]), str(meta["size"]["cols"])] + argv
    fds = (r,)
try:
    child = subprocess.Popen(argv, cwd=meta["cwd"], env=env, stdin=stdin_r, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True, pass_fds=fds)
except OSError as e:
    sys.stdout.write(json.dumps({"errno": errno.errorcode.get(e.errno or 0, "EIO"), "message": str(e)}) + "\n")
    sys.stdout.flush()
    os.unlink(ctl)
    os.unlink(fifo)
    os._exit(1)
for f in fds + (stdin_r,):
    os.close(f)
sys.stdout.write(json.dumps({"pid": child.pid}) + "\n")
sys.stdout.flush()
null = os.open(os.devnull, os.O_RDWR)
for f in (0, 1, 2):
    os.dup2(null, f)

def notify():
    with lock:
        for w in list(watchers):
            try:
                w.send(b".")
            except BlockingIOError:
                pass
            except OSError:
                watchers.remove(w)

def mark_capped():
    with lock:
        if state["capped"]:
            return
        state["capped"] = True
        open(path("capped"), "w").close()
    notify()

def pump(src, name):
    out = os.open(path(name + ".log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    n = os.fstat(out).st_size
    limit = cap
    fd = src.fileno()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            break
        if n + len(data) > limit:
            data = data[:max(limit - n, 0)]
            mark_capped()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(out, view):]
        except OSError:
            limit = 0
            mark_capped()
        n += len(data) - len(view)
        if data:
            notify()
    os.close(out)

def recv_all(c):
    parts = []
    while True:
        b = c.recv(4096)
        if not b:
            return b"".join(parts)
        parts.append(b)

def handle(c):
    try:
        op = c.recv(1)
        if op == b"W":
            c.setblocking(False)
            with lock:
                if not state["finished"]:
                    watchers.append(c)
                    return
        elif op == b"E":
            with lock:
                try:
                    os.unlink(fifo)
                except OSError:
                    pass
                for f in stdin_w:
                    os.close(f)
                stdin_w.clear()
            c.sendall(b"K")
        elif op == b"S":
            name = recv_all(c).decode()
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.Signals[name])
                except (OSError, KeyError):
                    pass
            c.sendall(b"K")
        elif op == b"R" and resize_w is not None:
            line = recv_all(c)
            try:
                os.write(resize_w, line)
            except OSError:
                pass
            c.sendall(b"K")
    except OSError:
        pass
    c.close()

def serve():
    while True:
        try:
            c, _ = srv.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(c,), daemon=True).start()

threading.Thread(target=serve, daemon=True).start()
readers = [threading.Thread(target=pump, args=(child.stdout, "stdout")),
           threading.Thread(target=pump, args=(child.stderr, "stderr"))]
for t in readers:
    t.daemon = True
    t.start()
rc = child.wait()
deadline = time.time() + 1
for t in readers:
    t.join(max(deadline - time.time(), 0))
code, sig = (rc, None) if rc >= 0 else (None, signal.Signals(-rc).name)
ended = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".%03dZ" % (int(time.time() * 1000) % 1000)
tmp = path("exit.json.tmp")
with open(tmp, "w") as f:
    json.dump({"state": "exited", "exitCode": code, "signal": sig, "endedAt": ended}, f)
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, path("exit.json"))
with lock:
    state["finished"] = True
    for w in watchers:
        try:
            w.close()
        except OSError:
            pass
for f in (ctl, fifo):
    try:
        os.unlink(f)
    except OSError:
        pass
srv.close()
os._exit(0)
`;
