from tests.test_clients import *  # noqa
def test_peek(inst, server, tmp_path):
    print(run_curl(inst, tmp_path, f"{server.url}files/", client=inst.clients["alice"], cert="none"))
    env = rclone_remote(inst, server, tmp_path, "bad", "nope")
    r = run_rclone(env, "lsd", "--low-level-retries", "1", "--retries", "1", "bad:")
    print(r.returncode, r.stderr[-600:])
