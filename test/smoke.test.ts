import t from 'tap';
import { Sqlr1Error } from '../lib/errors.js';
t.test('error class', async (t) => {
  const e = new Sqlr1Error('ERR_CONFIG', 'x');
  t.equal(e.code, 'ERR_CONFIG');
});
