// The few values several screens of a page show (the family app's balance and contacts): each
// is set through the store, and every screen that shows it is told. A screen keeps the rest of
// its state to itself; what it needs from elsewhere comes in its constructor.

export class Store {
  constructor(values = {}) {
    this.values = new Map(Object.entries(values));
    this.watchers = new Map(); // name -> [fn(value)], called in the order they were added
  }

  get(name) {
    return this.values.get(name);
  }

  set(name, value) {
    this.values.set(name, value);
    for (const fn of this.watchers.get(name) || []) fn(value);
  }

  /** Call `fn(value)` whenever `name` is set. */
  watch(name, fn) {
    if (!this.watchers.has(name)) this.watchers.set(name, []);
    this.watchers.get(name).push(fn);
  }
}
