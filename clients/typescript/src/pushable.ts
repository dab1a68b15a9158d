/**
 * A minimal async queue: values pushed from anywhere, read by one `for await` (the request side
 * of a bidirectional gRPC stream, which connect-es takes as an AsyncIterable).
 */
export class Pushable<T> implements AsyncIterable<T> {
  private readonly values: T[] = [];
  private waiting: ((result: IteratorResult<T>) => void) | undefined;
  private ended = false;

  /** Queue `value` for the reader; ignored after `end()`. */
  push(value: T): void {
    if (this.ended) {
      return;
    }
    const wake = this.waiting;
    if (wake !== undefined) {
      this.waiting = undefined;
      wake({ value, done: false });
    } else {
      this.values.push(value);
    }
  }

  /** End the stream once the queued values are read. */
  end(): void {
    this.ended = true;
    const wake = this.waiting;
    if (wake !== undefined && this.values.length === 0) {
      this.waiting = undefined;
      wake({ value: undefined, done: true });
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const next = this.values.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.ended) {
        return;
      }
      const result = await new Promise<IteratorResult<T>>((resolve) => {
        this.waiting = resolve;
      });
      if (result.done === true) {
        return;
      }
      yield result.value;
    }
  }
}
