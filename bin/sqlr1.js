#!/usr/bin/env node
// The `sqlr1` command: runs the compiled CLI (dist/, built by `npm run build:ts` or on install).
import { main } from '../dist/cli/main.js';

await main();
