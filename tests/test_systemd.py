"""deploy/sarbot.service: systemd accepts it, rates its sandbox safe, and sarbot works inside it.

``systemd-analyze`` checks the unit offline: no running systemd is needed. The
last tests run the real ``sarbot`` commands inside the parts of the unit's
sandbox that can be rebuilt without systemd, read from the unit itself: an
unprivileged user without capabilities, its seccomp filters (SystemCallFilter,
MemoryDenyWriteExecute, RestrictAddressFamilies, RestrictNamespaces), a file
system that is read-only but for the state directory and /tmp (ProtectSystem=strict),
hidden home folders (ProtectHome) and /proc without system information (ProcSubset=pid).
"""

from __future__ import annotations

import ctypes
import errno
import grp
import io
import json
import mmap
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from pykeepass import create_database
from sqlalchemy import create_engine, text

from sarbot.cli.main import DEFAULT_CONFIG
from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing import config as testconfig
from tests.conftest import CA_FILE, unique
from tests.servers import ServerError, postgres_server

if TYPE_CHECKING:
    from pysequoia import Tsk

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "sarbot.service"
INSTALLED = "/opt/sarbot/bin/sarbot"
STATE_DIRECTORY = "/var/lib/sarbot"
SARBOT = Path(sys.executable).parent / "sarbot"
MAX_EXPOSURE = 1.5
# Stand-ins for sarbot:sarbot, which this machine need not have.
USER, GROUP = "nobody", "nogroup"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(source: str) -> Unit:
    """Sections to keys to every value assigned, in order (the unit uses no continuation lines)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for line in source.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@cache
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail(
            "systemd-analyze is missing, so the unit cannot be checked "
            "(Debian: apt-get install systemd)",
            pytrace=False,
        )
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on a copy whose commands run this checkout's sarbot.

    verify insists that the programs a unit runs exist, and /opt/sarbot is not
    installed here. The copy keeps the unit's name, which verify checks too.
    """
    copy = folder / "sarbot.service"
    copy.write_text(unit_text.replace(INSTALLED, str(SARBOT)))
    return systemd_analyze("verify", "--man=no", str(copy))


class TestUnitFile:
    def test_systemd_accepts_the_unit_without_a_warning(self, tmp_path: Path) -> None:
        """systemd-analyze verify finds no error and prints no warning."""
        result = verify(UNIT.read_text(), tmp_path)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")

    def test_verify_reports_a_misspelt_setting(self, tmp_path: Path) -> None:
        """The check above has teeth: an unknown key or a bad value is reported."""
        broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strcit")
        result = verify(broken.replace("UMask=0077", "UMaks=0077"), tmp_path)
        assert "Failed to parse protect system value" in result.stderr
        assert "Unknown key 'UMaks'" in result.stderr

    def test_runs_the_installed_sarbot_with_the_default_config(self) -> None:
        """The schema is migrated before the daemon starts; both use the CLI's default config."""
        assert DEFAULT_CONFIG == "/etc/sarbot/config.toml"
        config = f"--config {DEFAULT_CONFIG}"
        assert service()["ExecStartPre"] == [f"{INSTALLED} {config} db upgrade"]
        assert service()["ExecStart"] == [f"{INSTALLED} {config} run"]

    def test_stops_gracefully_and_restarts_on_failure(self) -> None:
        """SIGTERM to every process, minutes to finish the work in hand, a restart after a crash."""
        assert service()["KillSignal"] == ["SIGTERM"]
        assert "KillMode" not in service()
        span = systemd_analyze("timespan", service()["TimeoutStopSec"][-1])
        found = re.search(r"μs: (\d+)", span.stdout)
        assert found is not None, span.stdout + span.stderr
        assert 120 <= int(found.group(1)) / 1_000_000 <= 900
        assert service()["Restart"] == ["on-failure"]


class TestSandbox:
    def test_exposure_is_low(self) -> None:
        """systemd-analyze security rates the unit well inside its 'OK' band."""
        result = systemd_analyze(
            "security", "--offline=true", f"--threshold={round(MAX_EXPOSURE * 10)}", str(UNIT)
        )
        found = re.search(r"Overall exposure level for sarbot\.service: (\d+\.\d)", result.stdout)
        assert found is not None, result.stdout + result.stderr
        assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
        assert result.returncode == 0, result.stdout + result.stderr

    def test_runs_unprivileged_with_every_protection(self) -> None:
        """A fixed unprivileged user, no capabilities, and each protection that fits."""
        expected = {
            "User": "sarbot",
            "Group": "sarbot",
            "CapabilityBoundingSet": "",
            "AmbientCapabilities": "",
            "NoNewPrivileges": "yes",
            "UMask": "0077",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes",
            "ProtectClock": "yes",
            "ProtectHostname": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "RestrictNamespaces": "yes",
            "RestrictRealtime": "yes",
            "RestrictSUIDSGID": "yes",
            "LockPersonality": "yes",
            "MemoryDenyWriteExecute": "yes",
            "SystemCallArchitectures": "native",
        }
        assert {key: service().get(key, ["(unset)"])[-1] for key in expected} == expected
        assert service()["SystemCallFilter"][0] == "@system-service"

    def test_writes_only_the_state_directory_the_example_config_uses(self) -> None:
        """/var/lib/sarbot is the one writable path; the example config keeps its data there."""
        assert service()["StateDirectory"] == ["sarbot"]
        assert not {"ReadWritePaths", "LogsDirectory", "CacheDirectory"} & set(service())
        storage = tomllib.loads((ROOT / "config.example.toml").read_text())["storage"]
        assert storage["database_url"] == f"sqlite:///{STATE_DIRECTORY}/sarbot.db"
        assert Path(storage["export_dir"]).is_relative_to(STATE_DIRECTORY)


# ----- the unit's sandbox, rebuilt without systemd -----------------------------------------


@cache
def syscall_groups() -> dict[str, list[str]]:
    """systemd's named groups of system calls (``@system-service``...), as this version has them."""
    result = systemd_analyze("syscall-filter")
    groups: dict[str, list[str]] = {}
    members: list[str] = []
    for line in result.stdout.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and not line.strip().startswith("#"):
            members.append(line.strip())
    assert "@system-service" in groups, result.stdout + result.stderr
    return groups


def expand(names: list[str]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(syscall_groups()[name]) if name.startswith("@") else {name}
    return found


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Laid out as in docs/operations.md: config and secrets root:GROUP 0640, state USER 0700.

    Not under tmp_path, whose parents only root may enter.
    """
    if os.geteuid() != 0:
        pytest.fail("rebuilding the unit's sandbox needs root, as make test has", pytrace=False)
    user, group = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    base = Path(tempfile.mkdtemp(prefix="sarbot-unit-"))
    base.chmod(0o755)
    for name, owner, mode in [
        ("etc", (0, group), 0o750),
        ("etc/secrets", (0, group), 0o750),
        ("state", (user, group), 0o700),
        ("tmp", (user, group), 0o700),
        ("elsewhere", (0, 0), 0o777),  # open to all, but not in the sandbox
    ]:
        (base / name).mkdir(mode=mode)
        (base / name).chmod(mode)
        os.chown(base / name, *owner)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def sandboxed(workdir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command inside the unit's sandbox, with workdir/state as its state directory."""
    allowed: set[str] = set()
    for entry in service()["SystemCallFilter"]:
        names = expand(entry.removeprefix("~").split())
        allowed = allowed - names if entry.startswith("~") else allowed | names
    families = service()["RestrictAddressFamilies"][-1].split()
    spec = {
        "allowed_syscalls": sorted(allowed),
        "syscall_errno": service().get("SystemCallErrorNumber", [""])[-1],
        "deny_write_execute": service()["MemoryDenyWriteExecute"] == ["yes"],
        "address_families": [int(getattr(socket, family)) for family in families],
        "restrict_namespaces": service()["RestrictNamespaces"] == ["yes"],
        "proc_subset_pid": service().get("ProcSubset") == ["pid"],
        "hide_homes": service()["ProtectHome"] == ["yes"],
        "umask": int(service()["UMask"][-1], 8),
        "writable": [str(workdir / "state"), str(workdir / "tmp")],
        # this checkout's Python, and the checkout itself (the venv and the CA live in it)
        "keep_visible": [str(Path(sys.base_prefix).resolve()), str(ROOT)],
        "stage": str(workdir / "tmp"),
        "user": USER,
        "group": GROUP,
    }
    env = {
        **os.environ,
        "HOME": str(workdir / "state"),
        "TMPDIR": str(workdir / "tmp"),
        "USER": USER,
        "LOGNAME": USER,
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.test_systemd", json.dumps(spec), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


PROBE = """
import ctypes, errno, mmap, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def outcome(call):
    try:
        result = call()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    except MemoryError:
        return "MemoryError"
    return "allowed" if result in (None, 0) else errno.errorcode[ctypes.get_errno()]
print(outcome(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC) and None))
print(outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()))
print(outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()))
print(outcome(lambda: open(sys.argv[1] + "/elsewhere/probe", "w").close()))
print(outcome(lambda: open(sys.argv[1] + "/state/probe", "w").close()))
print("hidden" if set(os.listdir("/root")) <= set(sys.argv[2:]) else "visible")
print(outcome(lambda: open("/proc/meminfo").close()))
print(outcome(lambda: libc.unshare(0x40000000)))
print(os.getuid() != 0, open("/proc/self/status").read().split("CapEff:")[1].split()[0])
print(ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)())
import cffi
print(outcome(lambda: cffi.FFI().callback("int(int)", lambda n: n) and None))
sys.stdout.flush()
os.setpriority(os.PRIO_PROCESS, 0, 5)
"""


class TestSarbotInsideTheSandbox:
    def test_the_rebuilt_sandbox_holds(self, workdir: Path) -> None:
        """Each rebuilt part refuses what the unit refuses; a call outside the filter kills."""
        # The Python and the checkout are kept visible when they live in a home folder.
        visible = (Path(sys.base_prefix).resolve(), ROOT)
        kept = [p.relative_to("/root").parts[0] for p in visible if p.is_relative_to("/root")]
        assert set(os.listdir("/root")) - set(kept), "/root holds nothing to hide"
        result = sandboxed(workdir, sys.executable, "-c", PROBE, str(workdir), *kept)
        assert result.stdout.split() == [
            "EPERM",  # memory both writable and executable
            "EAFNOSUPPORT",  # a netlink socket
            "allowed",  # an IPv6 socket
            "EROFS",  # a file in a folder open to all, outside the state directory
            "allowed",  # a file in the state directory
            "hidden",  # what /root holds
            "ENOENT",  # /proc/meminfo
            "EPERM",  # a new network namespace
            "True",  # not root
            "0000000000000000",  # no capabilities
            "7",  # a ctypes callback
            "MemoryError",  # a cffi callback in ABI mode
        ], result.stderr
        assert result.returncode == -31  # SIGSYS: setpriority is in @resources, which is refused

    @pytest.mark.mailstack
    def test_a_whole_request_is_answered_inside_the_sandbox(
        self, workdir: Path, mailstack: MailServer
    ) -> None:
        """db upgrade, run and audit verify work in it: KeePass, PostgreSQL and OpenPGP included."""
        support = Correspondent(mailstack, unique("support", "redtrain.test"))
        alice = Correspondent(mailstack, unique("alice", "example.test"))
        try:
            with postgres_server() as crm_url:
                config = write_config(workdir, support.address, alice.address, crm_url)

                def sarbot(*args: str) -> None:
                    result = sandboxed(workdir, str(SARBOT), "--config", str(config), *args)
                    assert result.returncode == 0, f"sarbot {' '.join(args)}:\n{result.stderr}"

                sarbot("db", "upgrade")
                key = request_with_key(alice, support)
                sarbot("run", "--once")
                alice.reply(alice.wait_for(subject_contains("Please confirm")))
                support.wait_for(subject_contains("Re: [SAR-"))
                sarbot("run", "--once")
                sarbot("audit", "verify")
        except ServerError as exc:
            pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
        export = alice.wait_for(subject_contains("A copy of your personal data"))
        [part] = list(export.iter_attachments())
        encrypted = part.get_payload(decode=True)
        assert isinstance(encrypted, bytes)
        from pysequoia import decrypt

        clear = decrypt(encrypted, decryptor=key.decryptor()).bytes
        assert clear is not None
        with zipfile.ZipFile(io.BytesIO(clear)) as archive:
            data = archive.read("data.json").decode()
        assert "Alice sandbox login" in data  # from the KeePass vault
        assert "sandbox-plan-gold" in data  # from PostgreSQL
        database = (workdir / "state" / "sarbot.db").stat()
        assert (database.st_uid, database.st_mode & 0o777) == (pwd.getpwnam(USER).pw_uid, 0o600)


CONNECTORS = """
[[connectors]]
name = "vault"
type = "keepass"
path = "vault.kdbx"
password = {{ file = "secrets/vault-password" }}
[[connectors]]
name = "crm"
type = "sql"
url = "{crm_url}"
[[connectors.queries]]
name = "customers"
category = "Customer"
sql = "SELECT email, plan FROM customers WHERE lower(email) = :email"
verify = "email"
"""


def write_config(workdir: Path, support: str, alice: str, crm_url: str) -> Path:
    """A config whose connectors read a KeePass vault and a PostgreSQL table holding alice."""
    etc = workdir / "etc"
    vault = create_database(str(etc / "vault.kdbx"), password="vault master password")
    vault.add_entry(vault.root_group, "Alice sandbox login", alice, "a password never exported")
    vault.save()
    engine = create_engine(crm_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE customers (email text, plan text)"))
        connection.execute(
            text("INSERT INTO customers VALUES (:email, 'sandbox-plan-gold')"), {"email": alice}
        )
    engine.dispose()
    (etc / "secrets" / "vault-password").write_text("vault master password\n")
    state = workdir / "state"
    testconfig.write_config(
        etc / "config.toml",
        support,
        server=MailServer(ca_file=str(CA_FILE)),
        database_url=f"sqlite:///{state / 'sarbot.db'}",
        export_dir=state / "exports",
        login_file="secrets/imap-password",
        extra=CONNECTORS.format(crm_url=crm_url),
    )
    group = grp.getgrnam(GROUP).gr_gid
    for path in [etc / "vault.kdbx", etc / "config.toml", *(etc / "secrets").iterdir()]:
        path.chmod(0o640)
        os.chown(path, 0, group)
    return etc / "config.toml"


def request_with_key(alice: Correspondent, support: Correspondent) -> Tsk:
    """alice asks for her data with her OpenPGP key attached; returns her private key."""
    from pysequoia import CipherSuite, Tsk

    key = Tsk.generate(f"Alice <{alice.address}>", cipher_suite=CipherSuite.RSA2k)
    message = EmailMessage()
    message["From"], message["To"] = alice.address, support.address
    message["Subject"], message["Message-ID"] = "GDPR DATA REQUEST", make_msgid("example.test")
    message.set_content("Please send me my data, encrypted to the attached key.")
    message.add_attachment(
        str(key.extract_certificate()).encode(),
        maintype="application",
        subtype="pgp-keys",
        filename="alice.asc",
    )
    alice.send_raw(message.as_bytes(), support.address)
    support.wait_for(lambda m: m["Message-ID"] == message["Message-ID"])
    return key


# ----- the launcher: python -m tests.test_systemd SPEC COMMAND... -------------------------
# Runs as root; enters the sandbox SPEC describes (see sandboxed()), then execs COMMAND.

SCMP_ACT_ALLOW, SCMP_ACT_KILL_PROCESS, SCMP_ACT_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
SCMP_CMP_LT, SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 2, 4, 6, 7
SHM_EXEC, PR_CAPBSET_DROP = 0o100000, 24
CLONE_NEWNS, MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x20000, 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
NAMESPACE_FLAGS = (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


Rule = tuple[int, str, tuple[ArgCmp, ...]]


def load_seccomp_filter(default: int, rules: list[Rule]) -> None:
    """Load one seccomp filter; systemd, too, loads one for each setting."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(default)
    for action, name, args in rules:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            continue
        array = (ArgCmp * len(args))(*args) if args else None
        if (code := lib.seccomp_rule_add_array(context, action, number, len(args), array)) != 0:
            raise OSError(-code, f"seccomp rule for {name}")
    code = lib.seccomp_load(context)
    lib.seccomp_release(context)
    if code != 0:
        raise OSError(-code, "seccomp_load")


def seccomp_filters(spec: dict[str, Any]) -> None:
    """MemoryDenyWriteExecute=, RestrictAddressFamilies=, RestrictNamespaces=, SystemCallFilter=."""
    eperm = SCMP_ACT_ERRNO | errno.EPERM
    if spec["deny_write_execute"]:
        w_x, x = mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_EXEC
        rules: list[Rule] = [(eperm, "mmap", (ArgCmp(2, SCMP_CMP_MASKED_EQ, w_x, w_x),))]
        for name in ("mprotect", "pkey_mprotect"):
            rules.append((eperm, name, (ArgCmp(2, SCMP_CMP_MASKED_EQ, x, x),)))
        rules.append((eperm, "shmat", (ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC),)))
        load_seccomp_filter(SCMP_ACT_ALLOW, rules)
    families, refused = spec["address_families"], SCMP_ACT_ERRNO | errno.EAFNOSUPPORT
    rules = [
        (refused, "socket", (ArgCmp(0, SCMP_CMP_LT, min(families), 0),)),
        (refused, "socket", (ArgCmp(0, SCMP_CMP_GT, max(families), 0),)),
    ]
    for family in set(range(min(families), max(families))) - set(families):
        rules.append((refused, "socket", (ArgCmp(0, SCMP_CMP_EQ, family, 0),)))
    load_seccomp_filter(SCMP_ACT_ALLOW, rules)
    if spec["restrict_namespaces"]:
        # clone3's flags cannot be inspected: ENOSYS makes the C library fall back to clone.
        rules = [(eperm, "setns", ()), (SCMP_ACT_ERRNO | errno.ENOSYS, "clone3", ())]
        for flag, name in ((f, n) for f in NAMESPACE_FLAGS for n in ("unshare", "clone")):
            rules.append((eperm, name, (ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag),)))
        load_seccomp_filter(SCMP_ACT_ALLOW, rules)
    # Last, as systemd does: the filter does not allow loading another filter.
    errno_name = spec["syscall_errno"]
    default = SCMP_ACT_ERRNO | getattr(errno, errno_name) if errno_name else SCMP_ACT_KILL_PROCESS
    load_seccomp_filter(default, [(SCMP_ACT_ALLOW, n, ()) for n in spec["allowed_syscalls"]])


def mount(libc: Any, source: str | None, target: str, kind: str | None, flags: int) -> None:
    data = b"mode=0755" if kind == "tmpfs" else b"subset=pid" if kind == "proc" else None
    encoded = [None if v is None else v.encode() for v in (source, target, kind)]
    if libc.mount(*encoded, flags, data) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"mount {target}: {os.strerror(number)}")


def private_file_system(libc: Any, spec: dict[str, Any]) -> None:
    """ProtectSystem=strict, ProtectHome=yes and ProcSubset=pid in a private mount namespace."""
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing done below reaches the host
    homes = ("/root", "/home", "/run/user") if spec["hide_homes"] else ()
    for home in filter(os.path.isdir, homes):
        keep = [path for path in spec["keep_visible"] if path.startswith(home + "/")]
        staged = [tempfile.mkdtemp(dir=spec["stage"]) for _ in keep]
        for path, stage in zip(keep, staged, strict=True):
            mount(libc, path, stage, None, MS_BIND | MS_REC)
        mount(libc, "tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV)
        for path, stage in zip(keep, staged, strict=True):
            os.makedirs(path, mode=0o755)
            mount(libc, stage, path, None, MS_MOVE)
    for path in spec["writable"]:
        mount(libc, path, path, None, MS_BIND)
    with open("/proc/self/mountinfo") as table:
        mounts = [line.split() for line in table]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        keep_flags = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
        flags = sum(bit for name, bit in keep_flags.items() if name in fields[5].split(","))
        read_only = 0 if point in spec["writable"] else MS_RDONLY
        try:
            mount(libc, None, point, None, MS_REMOUNT | MS_BIND | flags | read_only)
        except OSError:
            if not point.startswith(("/proc", "/sys", "/dev")):  # systemd treats these apart
                raise
    if spec["proc_subset_pid"]:
        mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def enter_sandbox(spec: dict[str, Any], argv: list[str]) -> NoReturn:
    libc = ctypes.CDLL(None, use_errno=True)
    last_capability = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    private_file_system(libc, spec)
    for capability in range(last_capability + 1):  # CapabilityBoundingSet= (empty)
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"dropping capability {capability}")
    os.setgroups([])
    os.setgid(grp.getgrnam(spec["group"]).gr_gid)
    os.setuid(pwd.getpwnam(spec["user"]).pw_uid)
    os.umask(spec["umask"])
    seccomp_filters(spec)
    os.execv(argv[0], argv)  # noqa: S606


if __name__ == "__main__":
    enter_sandbox(json.loads(sys.argv[1]), sys.argv[2:])
