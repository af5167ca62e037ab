// A plain java.net.Socket (an SSLSocket for https): one HTTP/1.1 request written by hand,
// and what the application gets back.
//
//   java SocketGet GET URL | java SocketGet POST URL BYTES   [--then URL2]
//
// Prints the response's status line, or the exception (toString()) and each cause; exits 1 then.
// --then URL2: the first response is read to its end (Content-Length) and, once standard
// input is closed, the second request is written on the same socket; the first's status line
// is printed as "first request: <status line>".
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.Socket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import javax.net.ssl.SSLSocketFactory;

public class SocketGet {
    public static void main(String[] args) throws Exception {
        int n = args.length;
        String[] urls = n >= 2 && args[n - 2].equals("--then") ? new String[] {args[1], args[n - 1]} : new String[] {args[1]};
        URI uri = URI.create(args[1]);
        byte[] body = args[0].equals("POST") ? new byte[Integer.parseInt(args[2])] : new byte[0];
        boolean tls = uri.getScheme().equals("https");
        int port = uri.getPort() != -1 ? uri.getPort() : tls ? 443 : 80; // -1: the URL names none
        try (Socket socket = tls
                ? SSLSocketFactory.getDefault().createSocket(uri.getHost(), port)
                : new Socket(uri.getHost(), port)) {
            OutputStream out = socket.getOutputStream();
            BufferedReader in = new BufferedReader(new InputStreamReader(socket.getInputStream(), StandardCharsets.US_ASCII));
            for (int i = 0; i < urls.length; i++) {
                boolean last = i == urls.length - 1;
                if (i > 0) {
                    System.in.readAllBytes(); // the pause between the two requests
                }
                String head = args[0] + " " + URI.create(urls[i]).getPath() + " HTTP/1.1\r\nHost: " + uri.getHost()
                        + "\r\nContent-Length: " + body.length + (last ? "\r\nConnection: close" : "") + "\r\n\r\n";
                out.write(head.getBytes(StandardCharsets.US_ASCII));
                out.write(body);
                out.flush();
                String status = in.readLine();
                if (status == null || last) {
                    System.out.println(status == null ? "end of stream before any response" : status);
                    return;
                }
                long length = 0; // the rest of the first response, so the next read is the second's
                for (String line = in.readLine(); line != null && !line.isEmpty(); line = in.readLine()) {
                    if (line.toLowerCase().startsWith("content-length:")) {
                        length = Long.parseLong(line.substring(15).trim());
                    }
                }
                in.skip(length);
                System.out.println("first request: " + status);
            }
        } catch (Exception e) {
            System.out.println(e);
            for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
                System.out.println("caused by: " + cause);
            }
            System.exit(1);
        }
    }
}
