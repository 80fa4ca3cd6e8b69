"""`make run`: bring the whole appliance up on this machine, deploy the demo model,
print how to call it, and stop everything on Ctrl-C.

Uses PostgreSQL and RabbitMQ when they answer on 127.0.0.1; otherwise falls back
to embedded defaults that need no server: SQLite (var/appliance.sqlite3) and
Kombu's filesystem broker (var/broker/).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from appliance.core.process import ProcessTree, stop_all, stop_on_signals

ROOT = Path(__file__).resolve().parents[2]
VAR = Path(os.environ.get("APPLIANCE_VAR_DIR", ROOT / "var"))
PY = sys.executable
API_PORT = int(os.environ.get("APPLIANCE_API_PORT", "8080"))
GATEWAY = os.environ.get("APPLIANCE_GATEWAY_BIND", "127.0.0.1:8100")
OPENAI = os.environ.get("APPLIANCE_GATEWAY_OPENAI_BIND", "127.0.0.1:8101")
NODE = os.environ.get("APPLIANCE_DEMO_NODE", "node-1")
TRITON_PORTS = [int(p) for p in os.environ.get("APPLIANCE_DEMO_TRITON_PORTS", "8200,8201,8202").split(",")]
DEMO_MODEL = "digits"
# `make run LLM=1`: SmolLM2 on vLLM beside the digits model. Behind a flag: the vLLM environment is
# 3.5 GB, the engine holds about 3.3 GiB and its first start compiles for a minute or two.
DEMO_LLM = "smollm2"
WITH_LLM = os.environ.get("APPLIANCE_DEMO_LLM", "") not in ("", "0")
RUNTIME_ROLE = "appliance_app"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def choose_backends(env: dict[str, str]) -> list[str]:
    notes = []
    if "APPLIANCE_DB_URL" not in env:
        if _reachable(5432):
            env["APPLIANCE_DB_URL"] = "postgresql://postgres@127.0.0.1:5432/appliance"
            _ensure_database("appliance")
            notes.append("database: PostgreSQL on 127.0.0.1:5432 (database 'appliance')")
        else:
            env["APPLIANCE_DB_URL"] = f"sqlite:///{VAR / 'appliance.sqlite3'}"
            notes.append("database: PostgreSQL not reachable, using embedded SQLite (var/appliance.sqlite3)")
    if "APPLIANCE_BROKER_URL" not in env:
        if _reachable(5672):
            env["APPLIANCE_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672//"
            notes.append("broker: RabbitMQ on 127.0.0.1:5672")
        else:
            env["APPLIANCE_BROKER_URL"] = "filesystem://"
            notes.append("broker: RabbitMQ not reachable, using Kombu's filesystem broker (var/broker/)")
    return notes


def _ensure_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


class Launcher:
    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.env.setdefault("APPLIANCE_VAR_DIR", str(VAR))
        self.procs: list[ProcessTree] = []
        self.token = ""

    def drop_privileges(self) -> None:
        """Migrations ran as the owner; the running appliance connects as a role
        that can neither change the audit trail nor disable its triggers."""
        url = self.env["APPLIANCE_DB_URL"]
        if not url.startswith("postgresql://postgres@") or "APPLIANCE_RUNTIME_DB_URL" in self.env:
            self.env["APPLIANCE_DB_URL"] = self.env.get("APPLIANCE_RUNTIME_DB_URL", url)
            return
        self.manage("db_runtime_role", RUNTIME_ROLE)
        self.env["APPLIANCE_DB_URL"] = url.replace("postgresql://postgres@", f"postgresql://{RUNTIME_ROLE}@", 1)
        print(f"database role of the running appliance: {RUNTIME_ROLE} (no superuser, audit trail append-only)", flush=True)

    def manage(self, *args: str) -> str:
        out = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True)
        return out.stdout

    def spawn(self, name: str, argv: list[str]) -> ProcessTree:
        """Each process in a group of its own, which stop() ends as a whole; each dies with
        the launcher even if it is killed outright (parent-death signal)."""
        tree = ProcessTree(name=name, argv=argv, cwd=ROOT, env=self.env, log_path=VAR / "log" / f"{name}.log")
        tree.start()
        self.procs.append(tree)
        return tree

    def api(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, ctype: str = "") -> Any:
        return api_call(f"http://127.0.0.1:{API_PORT}/api/v1/", self.token, method, path, body, raw=raw, ctype=ctype)

    def wait(self, what: str, predicate: Any, timeout: float = 180.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise SystemExit(f"{proc.name} exited ({proc.returncode}) while waiting for {what}; see var/log/{proc.name}.log")
            try:
                result = predicate()
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"timed out waiting for {what}")

    def stop(self) -> None:
        stop_all(self.procs, timeout=20)

    # --- the demo ---------------------------------------------------------------------
    def deploy_demo(self, name: str = DEMO_MODEL, artifact_name: str = f"{DEMO_MODEL}.tar.gz",
                    timeout: float = 180.0) -> dict[str, Any]:  # fmt: skip
        """The shipped model `name` (its manifest, its built artifact) live on the demo node (idempotent)."""
        models = {m["name"] for m in self.api("GET", "models/?limit=1000")["results"]}
        manifest = json.loads((ROOT / "triton_models" / name / "manifest.json").read_text())
        if name not in models:
            self.api("POST", "models/", {"name": name, "description": manifest["description"]})
        deployments = self.api("GET", f"deployments/?model={name}")["results"]
        live = [d for d in deployments if d["state"] == "live"]
        if live:
            return live[0]
        # A rollout still under way (a first start that was interrupted): wait for it, rather than
        # upload another version that the rollout in progress would refuse.
        under_way = [d for d in deployments if d["state"] in ("pending", "rolling_out", "progressing")]
        if under_way:
            deployment = under_way[0]
        else:
            fields = {"model": name, "format": manifest["format"], "max_batch_size": str(manifest["max_batch_size"]),
                      "decoupled": "true" if manifest["decoupled"] else "false"}  # fmt: skip
            if "signature" in manifest:  # a vllm version's is Triton's vLLM backend's
                fields["signature"] = json.dumps(manifest["signature"])
            artifact = (VAR / "build" / artifact_name).read_bytes()
            body, ctype = _multipart(fields, {"artifact": (artifact_name, artifact)})
            version = self.api("POST", "versions/", raw=body, ctype=ctype)
            deployment = self.api("POST", "deployments/", {"version": version["id"], "nodes": [NODE]})

        def settled() -> Any:
            current = self.api("GET", f"deployments/{deployment['id']}/")
            if current["state"] == "failed":
                raise SystemExit(f"the {name} rollout failed: {current['error']}")
            return current if current["state"] == "live" else None

        return self.wait(f"{name} to go live", settled, timeout=timeout)

    def grant_demo(self, model: str) -> None:
        grants = self.api("GET", "grants/?limit=1000")["results"]
        if not any(g["tenant"] == "demo" and g["model"] == model for g in grants):
            self.api("POST", "grants/", {"tenant": "demo", "model": model})

    def demo_key(self) -> str:
        tenants = {t["slug"] for t in self.api("GET", "tenants/?limit=1000")["results"]}
        if "demo" not in tenants:
            self.api("POST", "tenants/", {"slug": "demo", "name": "Demo team"})
        self.grant_demo(DEMO_MODEL)
        for key in self.api("GET", "api-keys/?limit=1000")["results"]:
            if key["tenant"] == "demo" and key["name"] == "demo" and key["is_active"]:
                self.api("POST", f"api-keys/{key['id']}/revoke/")
        return str(self.api("POST", "api-keys/", {"tenant": "demo", "name": "demo"})["key"])

    def run(self) -> None:
        started = time.monotonic()
        stop_on_signals()  # Ctrl-C, `kill -INT` and `kill -TERM` alike, however it was started
        failure: object = None
        try:
            self.prepare()
            self.serve(started)
        except (KeyboardInterrupt, SystemExit) as stop:
            if isinstance(stop, SystemExit) and stop.code:
                failure = stop.code
                print(stop.code, file=sys.stderr)
            print("\nstopping the appliance…", flush=True)
        finally:
            self.stop()
        if failure:
            sys.exit(1)

    def prepare(self) -> None:
        for sub in ("log", "run", "build"):
            (VAR / sub).mkdir(parents=True, exist_ok=True)
        notes = choose_backends(self.env)
        print("\n".join(notes), flush=True)
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")
        credentials = VAR / "run" / "admin-credentials"
        admin = json.loads(self.manage("bootstrap_admin", "--credentials", str(credentials)))
        self.token = admin["token"]
        self.drop_privileges()
        subprocess.run([PY, "-m", "triton_models.build", "--out", str(VAR / "build")], cwd=ROOT, check=True, capture_output=True)

    def serve(self, started: float) -> None:
        instance = self.env.get("APPLIANCE_INSTANCE", "appliance")
        self.spawn("api", [PY, "-m", "gunicorn", "appliance.wsgi", "-b", f"127.0.0.1:{API_PORT}", "-w", "2", "--access-logfile", "-"])
        self.spawn("worker", [PY, "-m", "celery", "-A", "appliance", "worker", "-Q", f"{instance}.control", "-c", "2", "-n", "control@%h", "--without-gossip", "--without-mingle"])
        self.spawn("optimiser", [PY, "-m", "celery", "-A", "appliance", "worker", "-Q", f"{instance}.optimise", "-c", "1", "-n", "optimiser@%h", "--without-gossip", "--without-mingle"])
        self.spawn("beat", [PY, "-m", "celery", "-A", "appliance", "beat", "-s", str(VAR / "run" / "celerybeat-schedule")])
        http, grpc_port, metrics = TRITON_PORTS
        self.spawn("node-agent", [PY, "manage.py", "node_agent", "--name", NODE, "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics)])
        gateway = self.spawn("gateway", [PY, "manage.py", "run_gateway", "--native", "--bind", GATEWAY, "--openai-bind", OPENAI])
        self.wait("the control-plane API", lambda: urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/healthz", timeout=2).status == 200)
        # A node is healthy once every model live on it is ready: after a first LLM run, that includes
        # starting its engines again (compiled, two on two cores: minutes), as long as an engine may take.
        self.wait(f"node {NODE} to be healthy", lambda: self.api("GET", f"nodes/{NODE}/")["state"] == "healthy",
                  timeout=900 if WITH_LLM else 180)  # fmt: skip
        deployment = self.deploy_demo()
        key = self.demo_key()
        credentials = VAR / "run" / "admin-credentials"
        info = {
            "console_url": f"http://127.0.0.1:{API_PORT}/console/",
            "api_url": f"http://127.0.0.1:{API_PORT}/api/v1/",
            "schema_url": f"http://127.0.0.1:{API_PORT}/api/schema/",
            "gateway": GATEWAY,
            "openai_url": f"http://{OPENAI}/v1",
            "model": DEMO_MODEL,
            "model_version": deployment["version_number"],
            "api_key": key,
            "admin_credentials": str(credentials),
            "operator_token": self.token,
            "node_triton_grpc": f"127.0.0.1:{grpc_port}",
            "gateway_pid": gateway.pid,
            "logs": str(VAR / "log"),
        }
        out = VAR / "run" / "appliance.json"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
        predicted, true_label = self.wait("the first inference through the gateway", lambda: _first_inference(info))
        print(BANNER.format(**info, elapsed=time.monotonic() - started, predicted=predicted, true_label=true_label,
                            snippet=SNIPPET.format(**info), out=out, python=PY), flush=True)  # fmt: skip
        if WITH_LLM:
            print(f"starting {DEMO_LLM} on vLLM (the first start compiles: a minute or two)…", flush=True)
            llm = self.deploy_demo(DEMO_LLM, f"{DEMO_LLM}.tar", timeout=900)
            self.grant_demo(DEMO_LLM)
            snippet = LLM_SNIPPET.format(**{**info, "model": DEMO_LLM})
            # The snippet itself, run until it streams an answer (a restarted node reloads the engine first).
            answer = self.wait("the first streamed answer", lambda: _run_snippet(snippet), timeout=900)
            print(LLM_BANNER.format(version=llm["version_number"], python=PY, snippet=snippet, answer=answer.strip(),
                                    openai=OPENAI_SNIPPET.format(**{**info, "model": DEMO_LLM})), flush=True)  # fmt: skip
        while all(proc.alive() for proc in self.procs):
            time.sleep(1)
        dead = [proc.name for proc in self.procs if not proc.alive()]
        print(f"stopped: {', '.join(dead)} exited; see var/log/", file=sys.stderr)


def _first_inference(info: dict[str, Any]) -> tuple[int, int] | None:
    import numpy as np
    import tritonclient.grpc as triton_grpc
    from sklearn.datasets import load_digits

    digits = load_digits()
    client = triton_grpc.InferenceServerClient(info["gateway"])
    image = triton_grpc.InferInput("IMAGE", [1, 64], "FP32")
    image.set_data_from_numpy(digits.data[:1].astype(np.float32))
    try:
        result = client.infer(info["model"], [image], headers={"authorization": f"Bearer {info['api_key']}"})
    except triton_grpc.InferenceServerException:
        return None
    return int(result.as_numpy("LABEL")[0][0]), int(digits.target[0])


def _run_snippet(code: str) -> str | None:
    """What the snippet printed, or None while it fails."""
    try:
        done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 and done.stdout.strip() else None


def api_call(base: str, token: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             ctype: str = "") -> Any:  # fmt: skip
    """One REST call with an operator token: JSON (or raw bytes of `ctype`) in, JSON out."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", ctype or "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = f"----appliance{os.urandom(8).hex()}"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


SNIPPET = '''import numpy as np, tritonclient.grpc as grpcclient
from sklearn.datasets import load_digits
digits = load_digits()
client = grpcclient.InferenceServerClient("{gateway}")
image = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
image.set_data_from_numpy(digits.data[7:8].astype(np.float32))
result = client.infer("{model}", [image], headers={{"authorization": "Bearer {api_key}"}})
print("predicted", result.as_numpy("LABEL")[0][0], "true", digits.target[7])'''

LLM_SNIPPET = '''import json, queue, numpy as np, tritonclient.grpc as grpcclient
def tensor(name, datatype, value):
    item = grpcclient.InferInput(name, [1], datatype)
    item.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else bool))
    return item
prompt = ("<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n<|im_start|>assistant\\n")
events = queue.Queue()
client = grpcclient.InferenceServerClient("{gateway}")
client.start_stream(callback=lambda result, error: events.put((result, error)),
                    headers={{"authorization": "Bearer {api_key}"}})
client.async_stream_infer("{model}", [tensor("text_input", "BYTES", prompt.encode()), tensor("stream", "BOOL", True),
    tensor("sampling_parameters", "BYTES", json.dumps({{"temperature": 0, "max_tokens": 64}}).encode())],
    enable_empty_final_response=True)
while True:
    result, error = events.get()
    if error: raise SystemExit(error)
    text = result.as_numpy("text_output")
    if text is not None: print(text[0].decode(), end="", flush=True)
    if result.get_response().parameters["triton_final_response"].bool_param: break
client.stop_stream(); print()'''

OPENAI_SNIPPET = '''from openai import OpenAI
client = OpenAI(base_url="{openai_url}", api_key="{api_key}")
for chunk in client.chat.completions.create(model="{model}", stream=True, temperature=0,
        messages=[{{"role": "user", "content": "What is the capital of France?"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()'''

LLM_BANNER = """
================ SmolLM2 (version {version}) streams on vLLM through the gateway ================
first streamed answer: {answer}

Try it with tritonclient (with {python}):
{snippet}

or with the openai client, on the gateway's OpenAI-compatible API:
{openai}
"""

BANNER = """
================ inference appliance is up ({elapsed:.1f} s to the first correct inference) ================
console:                {console_url}   (read-only Django admin: /admin/)
REST API:               {api_url}   (OpenAPI schema: {schema_url})
admin credentials:      {admin_credentials}   (operator API token in {out})
gateway (gRPC):         {gateway}   model '{model}' version {model_version}
OpenAI-compatible API:  {openai_url}   (the same API keys, as Bearer tokens)
demo API key (tenant 'demo', shown once): {api_key}
first inference through the gateway: predicted {predicted}, true label {true_label}
logs:                   {logs}
written to {out} (mode 0600)

Try it (with {python}):
{snippet}

Ctrl-C stops everything.
"""


def main() -> None:
    os.chdir(ROOT)
    Launcher().run()


if __name__ == "__main__":
    main()
