import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// `npm run dev` proxies the API to a control-plane member: WARMPOOL_API (default
// http://127.0.0.1:7070, the first member of `deploy/dev.sh up`). The same proxy serves
// `npm run preview` (the built files). In production the control plane serves dist/ itself
// (`--dashboard-dir dashboard/dist`), so the page and the API share one origin.
const target = process.env.WARMPOOL_API ?? 'http://127.0.0.1:7070';
const proxy = {
  '/v1': { target, changeOrigin: true },
  '/metrics': { target, changeOrigin: true },
};

export default defineConfig({
  plugins: [svelte()],
  server: { proxy, host: '127.0.0.1' },
  preview: { proxy, host: '127.0.0.1' },
  build: {
    target: 'es2022',
    // One small bundle; no source maps in what the control plane serves.
    sourcemap: false,
    reportCompressedSize: true,
  },
  test: {
    include: ['tests/unit/**/*.test.js'],
    environment: 'node',
  },
});
