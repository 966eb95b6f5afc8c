<?php
// Shared setup for the kestrelpy PHP tests: one Memcached connection configured the way
// PHP users drive Kestrel (text protocol, no compression, JSON bodies encoded by hand).

declare(strict_types=1);

function kp_fail(string $message): void
{
    fwrite(STDERR, $message . "\n");
    exit(1);
}

function kp_emit(array $event): void
{
    echo json_encode($event), "\n";
    fflush(STDOUT);
}

function kp_connect(string $host, int $port, bool $compression = false): Memcached
{
    if (!class_exists('Memcached')) {
        kp_fail('the memcached extension is not loaded');
    }
    $m = new Memcached();
    $m->setOption(Memcached::OPT_BINARY_PROTOCOL, false);
    $m->setOption(Memcached::OPT_COMPRESSION, $compression);
    // A reliable read blocks in the server for up to t=1000 ms; libmemcached must wait
    // longer than that, or it drops the socket and the server aborts the open item.
    $m->setOption(Memcached::OPT_CONNECT_TIMEOUT, 5000);
    $m->setOption(Memcached::OPT_POLL_TIMEOUT, 5000);
    $m->setOption(Memcached::OPT_RECV_TIMEOUT, 5000000);
    $m->setOption(Memcached::OPT_SEND_TIMEOUT, 5000000);
    if (!$m->addServer($host, $port)) {
        kp_fail("addServer($host, $port) failed: " . $m->getResultMessage());
    }
    return $m;
}

// A get that may legitimately miss: false + RES_NOTFOUND is "queue empty"; any other
// failure is a protocol problem and stops the script.
function kp_get(Memcached $m, string $key)
{
    $value = $m->get($key);
    if ($value === false && $m->getResultCode() !== Memcached::RES_NOTFOUND) {
        kp_fail("get($key) failed: " . $m->getResultCode() . ' ' . $m->getResultMessage());
    }
    return $value;
}
