"""serving.outbox: sends in order from a thread of its own, reports failures, holds back the
caller once DEPTH wait."""

import threading
import time

from serving.outbox import Outbox


def test_sends_in_order_and_reports_a_failure():
    box, sent, failed = Outbox().start(), [], []

    def fail():
        raise RuntimeError("the client is gone")

    for i in range(50):
        box.put(lambda i=i: sent.append(i))
    box.put(fail, lambda: failed.append("lost"))
    box.put(lambda: sent.append("after"))
    box.flush()
    assert sent == [*range(50), "after"] and failed == ["lost"]
    box.close()


def test_without_its_thread_it_sends_at_once():
    box, sent = Outbox(), []
    box.put(lambda: sent.append(1))
    assert sent == [1]


def test_a_full_outbox_holds_back_the_caller():
    release, box, sent = threading.Event(), Outbox(depth=2).start(), []
    box.put(lambda: (release.wait(60), sent.append(0)))
    box.put(lambda: sent.append(1))
    box.put(lambda: sent.append(2))  # the first is being sent: two wait, the outbox is full
    caller = threading.Thread(target=box.put, args=(lambda: sent.append(3),))
    caller.start()
    time.sleep(0.2)
    assert caller.is_alive() and not sent  # held back while the server does not take the first
    release.set()
    caller.join(60)
    box.close()
    assert sent == [0, 1, 2, 3]
