"""Hostile programs that try to reach the host: its files, its processes, its kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import CommandExitError, Sandbox
from corral.runtimes.oci import upper_dir
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.runsc


def sh(sbx: Sandbox, cmd: str, *, user: str | None = "root", timeout: float = 60) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``cmd`` in the sandbox, without raising on a non-zero exit."""
    try:
        r = sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitError as exc:
        return exc.exit_code, exc.stdout + exc.stderr
    return r.exit_code, r.stdout + r.stderr


def c_call(expr: str) -> str:
    """A Python one-liner that calls libc and prints ``result errno``."""
    return f"python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); print({expr}, ctypes.get_errno())'"


# -- host files ---------------------------------------------------------------


@pytest.mark.hostile("host files", "read the host's /etc/shadow")
def test_host_shadow(victim: Sandbox) -> None:
    host = Path("/etc/shadow").read_text()
    code, inside = sh(victim, "cat /etc/shadow")
    assert code == 0 and inside != host  # the image's own file
    assert host.splitlines()[0] not in inside


@pytest.mark.hostile("host files", "read a file in the host's /tmp by its path")
def test_host_tmp(victim: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, secret = host_secret
    code, out = sh(victim, f"cat {path}")
    assert code != 0 and secret not in out


@pytest.mark.hostile("host files", "read the server's database")
def test_server_database(victim: Sandbox, server: ServerProcess) -> None:
    db = server.data_dir / "corral.db"
    assert db.read_bytes().startswith(b"SQLite format")
    code, out = sh(victim, f"head -c 16 {db}")
    assert code != 0 and "SQLite" not in out
    _, found = sh(victim, "find / -name 'corral.db*' -not -path '/proc/*' 2>/dev/null; true")
    assert found.strip() == ""


@pytest.mark.hostile("host files", "read another sandbox's disk (its overlay upper dir on the host)")
def test_other_sandbox_disk(victim: Sandbox, bystander: Sandbox, server: ServerProcess) -> None:
    upper = upper_dir(server.data_dir / "sandboxes" / bystander.id)
    assert (upper / "home/user/keep.txt").exists()
    _, out = sh(victim, f'cat {upper}/home/user/keep.txt; grep -rl "bystander\'s data" / 2>/dev/null | head')
    assert "bystander's data" not in out


@pytest.mark.hostile("host files", "reach the host's root through /proc/1/root")
def test_proc_1_root(victim: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, secret = host_secret
    _, out = sh(victim, f"cat /proc/1/root{path}; ls /proc/1/root/ 2>&1")
    assert secret not in out


@pytest.mark.hostile("host files", "escape the root with the chroot trick (chroot into a subdir, then cd ..)")
def test_chroot_escape(victim: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, secret = host_secret
    script = (
        "import os\n"
        "os.makedirs('/tmp/jail', exist_ok=True)\n"
        "fd = os.open('/', os.O_RDONLY)\n"
        "os.chroot('/tmp/jail')\n"
        "os.fchdir(fd)\n"
        "for _ in range(64): os.chdir('..')\n"
        "os.chroot('.')\n"
        f"print(open({str(path)!r}).read())\n"
    )
    victim.files.write("/tmp/escape.py", script)
    code, out = sh(victim, "python3 /tmp/escape.py")
    assert secret not in out and code != 0


@pytest.mark.hostile("host files", "find host paths in /proc/self/mountinfo")
def test_mountinfo(victim: Sandbox, server: ServerProcess) -> None:
    _, out = sh(victim, "cat /proc/self/mountinfo /proc/mounts")
    assert str(server.data_dir) not in out and "/var/lib/corral" not in out


@pytest.mark.hostile("host files", "truncate or write the agent's bundle at /.corral (shared by every sandbox)")
def test_agent_bundle_read_only(victim: Sandbox, server: ServerProcess, sandbox_factory) -> None:
    (python,) = (server.data_dir / "agent").glob("agent-*/bin/python3")
    size = python.stat().st_size
    for attack in ("touch /.corral/x", "echo junk > /.corral/bin/python3", ": > /.corral/lib/ld-linux-x86-64.so.2"):
        code, out = sh(victim, attack)
        assert code != 0 and "Read-only" in out, attack
    assert python.stat().st_size == size
    assert sandbox_factory().commands.run("echo new sandboxes start").stdout == "new sandboxes start\n"


# -- host processes and kernel --------------------------------------------------


@pytest.mark.hostile("host processes", "see the host's processes in /proc")
def test_host_pids(victim: Sandbox, server: ServerProcess) -> None:
    assert server.proc is not None
    _, out = sh(victim, "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '")
    count = int(out.split()[0])
    assert count < 20  # its own handful, not the host's hundreds
    assert "corral.server.serve" not in out and "runsc" not in out


@pytest.mark.hostile("host processes", "ptrace the sandbox's init (the agent)")
def test_ptrace_init(victim: Sandbox) -> None:
    _, out = sh(victim, c_call("l.ptrace(16, 1, 0, 0)"), user=None)  # PTRACE_ATTACH as the user
    assert out.split()[0] == "-1"


@pytest.mark.hostile("kernel", "mount a filesystem as root")
def test_mount(victim: Sandbox) -> None:
    code, out = sh(victim, "mount -t tmpfs x /mnt && echo MOUNTED")
    assert code != 0 and "MOUNTED" not in out


@pytest.mark.hostile("kernel", "mount the host's disk (a block device) as root")
def test_mount_block_device(victim: Sandbox) -> None:
    _, devices = sh(victim, "ls /dev")
    assert "vda" not in devices and "sda" not in devices  # no host disk to name
    code, out = sh(victim, "mount /dev/vda /mnt && echo MOUNTED")
    assert code != 0 and "MOUNTED" not in out


@pytest.mark.hostile("kernel", "load a kernel module (init_module) as root")
def test_module_loading(victim: Sandbox) -> None:
    _, out = sh(victim, c_call("l.syscall(175, 0, 0, 0)"))
    assert out.split()[0] == "-1"


@pytest.mark.hostile("kernel", "open a raw socket as root")
def test_raw_socket(victim: Sandbox) -> None:
    code, out = sh(victim, "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'")
    assert code != 0 and "PermissionError" in out


@pytest.mark.hostile("kernel", "create a device node for the host's disk and read it, as root")
def test_device_node(victim: Sandbox) -> None:
    code, out = sh(victim, "mknod /tmp/sda b 253 0 && head -c 512 /tmp/sda | wc -c")
    assert code != 0 or out.strip().endswith("0")


@pytest.mark.hostile("kernel", "trigger the host's sysrq (reboot) as root")
def test_sysrq(victim: Sandbox) -> None:
    code, _ = sh(victim, "echo b > /proc/sysrq-trigger")
    assert code != 0


@pytest.mark.hostile("kernel", "read the host kernel's log (dmesg)")
def test_dmesg(victim: Sandbox) -> None:
    _, out = sh(victim, "dmesg")
    assert "Linux version" not in out  # gVisor's own made-up log, not the host's


@pytest.mark.hostile("kernel", "change the hostname and the clock as root")
def test_hostname_and_clock(victim: Sandbox) -> None:
    import socket
    import time

    before = socket.gethostname()
    sh(victim, "hostname pwned; date -s '2001-01-01'")
    assert socket.gethostname() == before
    assert time.time() > 1_700_000_000


@pytest.mark.hostile("kernel", "change kernel settings in /proc/sys as root")
def test_proc_sys(victim: Sandbox) -> None:
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    code, _ = sh(victim, "echo 0 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/kernel/panic")
    assert code != 0
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forwarding


# -- privilege inside -------------------------------------------------------------


@pytest.mark.hostile("privilege", "become root from the default user with setuid(0)")
def test_setuid(victim: Sandbox) -> None:
    code, out = sh(victim, "python3 -c 'import os; os.setuid(0)'", user=None)
    assert code != 0 and "PermissionError" in out


@pytest.mark.hostile("privilege", "become root through su or a world-writable root file")
def test_su_and_writable_files(victim: Sandbox) -> None:
    _, out = sh(
        victim, "su -c id root </dev/null; find / -xdev -user root -perm -0002 -type f 2>/dev/null; true", user=None
    )
    assert "uid=0" not in out
    assert not [line for line in out.splitlines() if line.startswith("/") and not line.startswith("/proc")]


@pytest.mark.hostile("privilege", "gain capabilities in a new user namespace, then mount")
def test_user_namespace(victim: Sandbox) -> None:
    _, out = sh(victim, "unshare -r sh -c 'id -u; cat /etc/shadow'", user=None)
    assert "root:" not in out  # root in a user namespace of its own is still the user outside it


@pytest.mark.hostile("privilege", "read root's files as the default user")
def test_user_reads_root_files(victim: Sandbox) -> None:
    sh(victim, "echo topsecret > /root/secret && chmod 600 /root/secret")
    code, out = sh(victim, "cat /root/secret", user=None)
    assert code != 0 and "topsecret" not in out
