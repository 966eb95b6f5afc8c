<?php
// A thin job client over the memcached extension, shaped the way PHP applications fed
// Kestrel: the client JSON-encodes bodies itself (the extension's serializer marks a body
// in the flags, which no other language reads), compression is off (a compressed body is
// bytes no other client can read), queue names carry an environment prefix, and reads are
// reliable: each get("<q>/close/open/t=MS") confirms the previous job and opens the next.

declare(strict_types=1);
require_once __DIR__ . '/common.php';

// The queue a job for $queue goes to in environment $env: "<env>_<queue>", the name
// `kestrelpy consume -e ENV -q QUEUE` and `kestrelpy produce -e ENV -q QUEUE` use.
function kp_job_queue(string $env, string $queue): string
{
    return $env . '_' . $queue;
}

// The job envelope as PHP producers wrote it: the job name spelled jobName, the data key
// left out when there is no data.
function kp_envelope(string $jobName, string $instance, $data = null): array
{
    $job = ['instance' => $instance, 'jobName' => $jobName];
    if ($data !== null) {
        $job['data'] = $data;
    }
    return $job;
}

final class KpJobClient
{
    private Memcached $m;

    // $compression: let the extension compress large bodies, as it does by default. Only
    // for showing what that does to other readers; zlib, so a test can inflate the body.
    public function __construct(string $host, int $port, bool $compression = false)
    {
        $this->m = kp_connect($host, $port, $compression);
        if ($compression) {
            $this->m->setOption(Memcached::OPT_COMPRESSION_TYPE, Memcached::COMPRESSION_ZLIB);
        }
    }

    public function put(string $queue, $value): string
    {
        $body = json_encode($value, JSON_THROW_ON_ERROR);
        if (!$this->m->set($queue, $body)) {
            kp_fail("set $queue failed: " . $this->m->getResultCode() . ' '
                . $this->m->getResultMessage());
        }
        return $body;
    }

    // The next item's body (confirming the one read before it on this queue), or null if
    // none arrived within $timeoutMs.
    public function next(string $queue, int $timeoutMs): ?string
    {
        $body = kp_get($this->m, $queue . '/close/open/t=' . $timeoutMs);
        return $body === false ? null : (string)$body;
    }

    // Give the open item back to the head of the queue (the job failed).
    public function abort(string $queue): void
    {
        kp_get($this->m, $queue . '/abort');
    }

    // Confirm the last item read: a worker that stops must say so, or the item goes back
    // on the queue when the connection closes.
    public function close(string $queue): void
    {
        kp_get($this->m, $queue . '/close');
    }
}
