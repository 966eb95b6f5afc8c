"""ActiveMQ and RabbitMQ as test fixtures: real brokers, run as our children on loopback.

Each broker runs from the Debian package's files with a scratch directory of its own (its
config, data and logs), on free 127.0.0.1 ports, never as a system service:

- ActiveMQ 5.17: java runs ``activemq.jar`` directly. The ``/usr/bin/activemq`` wrapper, as
  root, forces ``/var/lib/activemq``, a pidfile in ``/run`` and the ``activemq`` user, then
  hangs in "slave mode" on a root-owned directory. Our ``activemq.xml`` names every path in
  full: its ``${activemq.data}`` placeholders are not expanded without the Spring property
  configurer of the stock file, and the broker would create a directory literally called
  ``${activemq.data}`` in the current one. log4j 1.2 logs to stdout through the
  ``log4j.properties`` we write, or not at all.
- RabbitMQ 3.10 with rabbitmq_stomp: ``/usr/lib/rabbitmq/bin/rabbitmq-server`` in the
  foreground (the ``/usr/sbin`` wrapper switches user and logs to ``/var/log``), logging to
  stdout. We start its ``epmd`` ourselves (a node left to start one spawns a daemon that
  outlives it) and always set ``RABBITMQ_DIST_PORT``: the default, AMQP port + 20000, is
  above 65535 for high ports, and then the node fails to boot *and exits 0*.

Ready means the STOMP port accepts a connection (RabbitMQ opens it as the last plugin starts,
just before "Server startup complete"), within a deadline; a broker that exits or stays deaf
raises :class:`BrokerError` carrying its log. Stopping is SIGTERM by pid (SIGKILL after a
deadline), then SIGKILL to whatever is left of the broker's process group: the RabbitMQ
script runs the Erlang VM as its child, and the VM has helper children of its own. Starting,
draining the output and stopping one process is ``loadtest/_servers.py``'s ``Server``, shared
with the other suites.

Measured here (2 cores): ActiveMQ ready in 1.1-2.1 s, stopped in ~0.2 s; RabbitMQ ready in
3.1-5.1 s, stopped in 1-3 s. A broker may be stopped and started again on the same data
directory and ports (``restart``): persistent messages survive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the loadtest package lives at the repo root, not installed
    sys.path.insert(0, str(ROOT))

from loadtest._servers import (  # noqa: E402  (needs ROOT on sys.path)
    HOST,
    Server,
    ServerError,
    subprocess_env,
)

__all__ = [  # HOST and subprocess_env for the tests' own child processes
    "BROKERS",
    "HOST",
    "ActiveMQ",
    "Broker",
    "BrokerError",
    "RabbitMQ",
    "free_ports",
    "running",
    "subprocess_env",
]

ACTIVEMQ_HOME = Path("/usr/share/activemq")
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
ACTIVEMQ_START_TIMEOUT_S = 60.0  # ~2 s here; a JVM on a loaded 2-core runner is slower
RABBITMQ_START_TIMEOUT_S = 90.0  # ~5 s here; the Erlang boot is the slow part
STOP_TIMEOUT_S = 30.0  # RabbitMQ takes ~3 s to close its message stores
LOG_LINES = 200

# The module flags of /usr/bin/activemq for Java > 8 (the Debian 5.17 script).
JAVA_MODULE_FLAGS = (
    "--add-reads=java.xml=java.logging",
    "--add-opens=java.base/java.security=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.naming/javax.naming.spi=ALL-UNNAMED",
    "--add-opens=java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
    "--add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED",
    "--add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED",
)

ACTIVEMQ_XML = """\
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans
         http://www.springframework.org/schema/beans/spring-beans.xsd
         http://activemq.apache.org/schema/core
         http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="kestrelpy-test"
          useJmx="false" schedulerSupport="false" advisorySupport="false"
          dataDirectory="{data}" tmpDataDirectory="{data}/tmp">
    <persistenceAdapter>
      <kahaDB directory="{data}/kahadb"/>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://127.0.0.1:{openwire_port}"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{stomp_port}"/>
    </transportConnectors>
  </broker>
</beans>
"""

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %-5p %c{1} - %m%n
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
"""


class BrokerError(Exception):
    """A broker did not start (or stop) as asked; ``str()`` has the reason and its log."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago. All are held open
    until all are chosen, so the kernel cannot hand out the same port twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _program(path: Path | str | None, package: str) -> str:
    if path is None or not Path(path).exists():
        raise BrokerError(f"{path or package} not found: run `make system-deps` ({package})")
    return str(path)


class Broker:
    """One broker with a STOMP listener; subclasses say how it is run.

    ``processes`` are started in order and stopped in reverse (RabbitMQ: epmd, then the
    node); ``restartable`` are the ones ``restart`` cycles. One thread controls a broker.
    """

    name = "broker"
    login = "guest"  # RabbitMQ's default user, which it accepts on loopback
    passcode = "guest"

    def __init__(self, scratch: Path, start_timeout_s: float) -> None:
        self.scratch = scratch
        self.start_timeout_s = start_timeout_s
        self.stomp_port = 0
        self.processes: list[Server] = []
        self.ready_s: list[float] = []  # seconds to ready, per start of the broker itself

    @property
    def broker(self) -> Server:
        return self.processes[-1]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.stomp_port}"

    def options(self, **extra: Any) -> dict[str, Any]:
        """The stomp backend's options for this broker."""
        return {
            "host": HOST,
            "port": self.stomp_port,
            "login": self.login,
            "passcode": self.passcode,
            **extra,
        }

    def start(self) -> None:
        """Start every process; on error stop what did start and raise BrokerError."""
        try:
            for proc in self.processes[:-1]:
                self._start(proc)
            self._start_broker()
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Stop the broker process (SIGTERM: a clean shutdown) and start it again on the same
        data directory and ports; helpers such as epmd keep running."""
        self._stop(self.broker)
        self._start_broker()

    def stop(self) -> None:
        """Stop every process that runs, in reverse order. Never raises for a process that
        needed SIGKILL: the note is in its log."""
        for proc in reversed(self.processes):
            self._stop(proc)

    def log(self) -> str:
        return "\n".join(proc.log(LOG_LINES) for proc in self.processes)

    def _start_broker(self) -> None:
        started = time.monotonic()
        self._start(self.broker)
        self.ready_s.append(time.monotonic() - started)

    def _start(self, proc: Server) -> None:
        try:
            proc.start(self.start_timeout_s)
        except ServerError as err:
            raise BrokerError(
                f"{self.name}: {proc.name} did not start: {err.why}\n{self.log()}"
            ) from None

    def _stop(self, proc: Server) -> None:
        if not proc.starts:
            return
        with contextlib.suppress(ServerError):  # not even SIGKILL: the group kill is all we have
            proc.stop(signal.SIGTERM, STOP_TIMEOUT_S)  # waits; SIGKILL after the deadline
        _kill_group(proc.pid)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a stopped child's process group (it leads its own session):
    the helpers of an Erlang VM or a JVM whose parent is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ActiveMQ(Broker):
    name = "activemq"

    def __init__(self, scratch: Path, start_timeout_s: float = ACTIVEMQ_START_TIMEOUT_S) -> None:
        super().__init__(scratch, start_timeout_s)
        java = _program(shutil.which("java"), "a Java runtime (activemq depends on one)")
        jar = _program(ACTIVEMQ_HOME / "bin" / "activemq.jar", "activemq")
        openwire_port, self.stomp_port = free_ports(2)
        conf, data, tmp = (scratch / name for name in ("conf", "data", "tmp"))
        for directory in (conf, data, tmp):
            directory.mkdir(parents=True, exist_ok=True)
        xml = ACTIVEMQ_XML.format(
            data=data, openwire_port=openwire_port, stomp_port=self.stomp_port
        )
        (conf / "activemq.xml").write_text(xml)
        (conf / "log4j.properties").write_text(LOG4J_PROPERTIES)
        argv = [
            java,
            "-Xms64m",
            "-Xmx256m",
            *JAVA_MODULE_FLAGS,
            f"-Djava.io.tmpdir={tmp}",
            f"-Dactivemq.classpath={conf}",  # where log4j finds log4j.properties
            f"-Dactivemq.home={ACTIVEMQ_HOME}",
            f"-Dactivemq.base={scratch}",
            f"-Dactivemq.conf={conf}",
            f"-Dactivemq.data={data}",
            "-jar",
            jar,
            "start",
            f"xbean:file:{conf / 'activemq.xml'}",
        ]
        broker = Server(argv, name="activemq", port=self.stomp_port, cwd=scratch)
        self.processes = [broker]


class RabbitMQ(Broker):
    name = "rabbitmq"

    def __init__(self, scratch: Path, start_timeout_s: float = RABBITMQ_START_TIMEOUT_S) -> None:
        super().__init__(scratch, start_timeout_s)
        server = _program(RABBITMQ_SERVER, "rabbitmq-server")
        epmd = _program(shutil.which("epmd"), "erlang-base (rabbitmq-server depends on it)")
        amqp, self.stomp_port, dist, epmd_port = free_ports(4)
        for name in ("home", "mnesia", "log"):
            (scratch / name).mkdir(parents=True, exist_ok=True)
        (scratch / "empty.conf").write_text("")
        (scratch / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {HOST}:{amqp}\nstomp.listeners.tcp.1 = {HOST}:{self.stomp_port}\n"
        )
        (scratch / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        env = subprocess_env()
        env.update(
            HOME=str(scratch / "home"),  # the Erlang cookie goes here
            RABBITMQ_CONF_ENV_FILE=str(scratch / "empty.conf"),
            RABBITMQ_NODENAME=f"rmq{amqp}@localhost",
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(amqp),
            RABBITMQ_DIST_PORT=str(dist),  # never the default: see the module docstring
            ERL_EPMD_PORT=str(epmd_port),
            ERL_EPMD_ADDRESS=HOST,
            RABBITMQ_MNESIA_BASE=str(scratch / "mnesia"),
            RABBITMQ_LOG_BASE=str(scratch / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_CONFIG_FILE=str(scratch / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(scratch / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
            ),
        )
        self.processes = [
            Server(
                [epmd, "-port", str(epmd_port), "-address", HOST],
                name="epmd",
                port=epmd_port,
                cwd=scratch,
                env=env,
            ),
            Server([server], name="rabbitmq", port=self.stomp_port, cwd=scratch, env=env),
        ]


BROKERS: dict[str, Callable[[Path], Broker]] = {"activemq": ActiveMQ, "rabbitmq": RabbitMQ}


@contextlib.contextmanager
def running(kind: str, scratch: Path) -> Iterator[Broker]:
    """A started broker of ``kind``, stopped (by pid) when the block ends, however it ends."""
    broker = BROKERS[kind](scratch)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
